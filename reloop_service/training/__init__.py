"""training domain of reloop-service."""
