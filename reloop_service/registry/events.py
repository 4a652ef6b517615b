"""Kinds of registry events (the append-only audit trail) and version statuses."""

from __future__ import annotations

from enum import StrEnum


class EventKind(StrEnum):
    """What happened to a version or to the production alias."""

    REGISTERED = "registered"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    REJECTED = "rejected"
    FAILED = "failed"


class VersionStatus(StrEnum):
    """Lifecycle of a model version. Exactly one version per model is ``production`` at most."""

    CANDIDATE = "candidate"
    PRODUCTION = "production"
    ARCHIVED = "archived"
    REJECTED = "rejected"
    FAILED = "failed"


class CycleStatus(StrEnum):
    """State of one daily cycle run."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # not trained on by design (no data, too few rows or labels); claimable again
