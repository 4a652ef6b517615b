"""serving domain of reloop-service."""
