"""Frozen dataclasses the store returns. ORM rows never leave the store, so callers cannot
lazy-load, mutate or outlive a session by accident."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from reloop_service.registry.events import CycleStatus, EventKind, VersionStatus
from reloop_service.registry.records import CycleRecord


def _plain(value: Any) -> Any:
    """JSON-friendly copy: dates as ISO strings, enums as values, nested dataclasses as dicts."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, CycleStatus | EventKind | VersionStatus):
        return value.value
    if isinstance(value, CycleRecord):
        return value.to_json()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class _ToDict:
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (for ``--json`` output and API responses)."""
        out = _plain(self)
        assert isinstance(out, dict)
        return out


@dataclass(frozen=True, slots=True)
class ArtifactRef(_ToDict):
    """Where an artifact lives and what its bytes must hash to."""

    uri: str
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class ModelVersion(_ToDict):
    """One registered model version with its lineage, data window, metrics and gate verdict."""

    model_name: str
    version: int
    status: VersionStatus
    parent_version: int | None
    created_at: datetime
    artifact: ArtifactRef
    feature_spec_hash: str | None
    train_config: dict[str, Any]
    data_first_day: date | None
    data_last_day: date | None
    metrics: dict[str, Any]
    gate_verdict: dict[str, Any] | None
    cycle_date: date | None
    status_changed_at: datetime
    rolled_back_at: datetime | None
    period: str | None = None  # the cycle's period, named by its start (``2024-05-01T13``)


@dataclass(frozen=True, slots=True)
class Production(_ToDict):
    """The production alias of a model and the version it points at."""

    model_name: str
    version: ModelVersion
    updated_at: datetime
    updated_by: str


@dataclass(frozen=True, slots=True)
class RegistryEvent(_ToDict):
    """One entry of the append-only audit trail."""

    id: int
    model_name: str
    kind: EventKind
    version: int | None
    from_version: int | None
    to_version: int | None
    actor: str
    reason: str
    created_at: datetime
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Lineage(_ToDict):
    """A version and its ancestors, nearest parent first."""

    version: ModelVersion
    parents: tuple[ModelVersion, ...]


@dataclass(frozen=True, slots=True)
class CycleRun(_ToDict):
    """One cycle's run record; ``attempt`` and ``owner`` identify the current claim.

    ``period`` names the cycle's period by its start (``2024-05-01`` daily, ``2024-05-01T13`` hourly) and
    is the claim's key; ``cycle_date`` is the day it starts on.
    """

    id: int
    model_name: str
    cycle_date: date
    period: str
    status: CycleStatus
    attempt: int
    owner: str
    started_at: datetime
    heartbeat_at: datetime
    finished_at: datetime | None
    error: str | None
    produced_version: int | None
    details: CycleRecord  # the cycle's record of the run (claim notes ride along as extra keys)


@dataclass(frozen=True, slots=True)
class CycleClaim(_ToDict):
    """Result of ``claim_cycle``: whether the caller now owns the date, why, and the run record.

    ``reason`` is one of ``claimed`` (new run), ``taken_over`` (stale, failed or forced re-run;
    attempt bumped), ``held`` (another owner's heartbeat is fresh), ``succeeded`` (the date is done; a
    no-op without force) or ``failed`` (failed and ``retry_failed`` is off).
    """

    acquired: bool
    reason: str
    run: CycleRun
