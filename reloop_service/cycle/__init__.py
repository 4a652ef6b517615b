"""cycle domain of reloop-service."""
