"""Connectors: the store platforms (Shopify, WooCommerce) and email transports behind one interface."""
