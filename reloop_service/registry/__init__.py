"""registry domain of reloop-service."""
