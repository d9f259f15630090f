"""Encore: retention automation for Shopify and WooCommerce stores.

One import root over the repository's folders (each a subpackage, linked here):

    encore_retention.core        encore/       the foundation: events, settings, store, queue, crypto, logs, …
    encore_retention.webhooks    webhooks/     receivers: verify, normalise, enqueue; the web app
    encore_retention.flows       flows/        flow schema, loader, engine, triggers, steps; templates/ inside
    encore_retention.connectors  connectors/   the platforms' registry and APIs, and the email transports
    encore_retention.worker      (this folder) RQ's worker with its scheduler; `python worker.py` runs it
"""
