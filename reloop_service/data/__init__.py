"""data domain of reloop-service."""
