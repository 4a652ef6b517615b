"""reloop-service: keep a CTR model fresh and learning from its own mistakes."""

__version__ = "0.1.0"
