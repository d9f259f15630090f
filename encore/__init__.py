"""Encore: retention automation for Shopify and WooCommerce stores."""

__version__ = "0.1.0"
