"""The registry's own exceptions, so callers never handle SQLAlchemy or driver errors.

Each carries ``status_code`` (the HTTP status a route should answer with) and ``retryable``
(whether running the whole transaction again, in a fresh session, may succeed).
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base of every registry error."""

    status_code: int = 500
    retryable: bool = False


class NotFoundError(RegistryError):
    """A version, run or alias that does not exist."""

    status_code = 404


class ConflictError(RegistryError):
    """The database state moved under the caller (or a unique rule would break)."""

    status_code = 409


class RetryableConflictError(ConflictError):
    """A race that a fresh transaction resolves: a taken version number, a lock or serialization failure."""

    retryable = True


class PromotionConflictError(ConflictError):
    """Production is no longer what the caller saw (compare-and-set lost), or another promotion won."""


class ClaimLostError(ConflictError):
    """A cycle run's claim was taken over by another owner (stale heartbeat) or already finished."""


class InvalidTransitionError(RegistryError):
    """A status change the lifecycle forbids (for example a rollback to a rejected version without force)."""

    status_code = 422


class SchemaOutOfDateError(RegistryError):
    """The database is not at the Alembic head this code expects."""

    status_code = 503


class ArtifactIntegrityError(RegistryError):
    """An artifact whose bytes do not match its recorded sha256 or size."""

    status_code = 500

    def __init__(self, message: str, *, uri: str) -> None:
        super().__init__(message)
        self.uri = uri


class ArtifactMissingError(ArtifactIntegrityError):
    """A registered artifact that is no longer at its URI."""


class ArtifactUnusableError(RegistryError):
    """A version whose artifact cannot be served: missing, checksum mismatch, or not a loadable model.

    Raised before production moves (promote, rollback), so the alias never points at a model no replica can
    load. ``reason`` is a short phrase without paths (safe for unauthenticated health routes); the message
    carries the full detail.
    """

    status_code = 422

    def __init__(self, message: str, *, version: int, reason: str) -> None:
        super().__init__(message)
        self.version = version
        self.reason = reason


class DeadlineExceededError(RegistryError):
    """An admin write that did not finish before its deadline; it was rolled back, never applied later."""

    status_code = 503


class DatabaseError(RegistryError):
    """Any other database failure (connection refused, bad SQL), with the driver message."""

    status_code = 503
