"""Sample WooCommerce webhooks (documented payload shapes) that `encore samples send` posts to a running Encore."""
