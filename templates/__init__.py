"""Encore's built-in email templates, installed as the package `flows.templates` (see pyproject.toml)."""
