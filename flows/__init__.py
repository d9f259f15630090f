"""Flows: the schema of flow files, their loader, the engine that runs them, triggers and steps."""
