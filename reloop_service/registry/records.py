"""Typed records the registry stores as JSON: the gate's verdict and a cycle run's record.

The cycle's gate builds a ``GateVerdict`` (``cycle.steps.gate``), the register step stores it on the
version (``gate_verdict``) and inside the run's ``CycleRecord`` (``details``); the report, the API's
schemas and the dashboard read these same models. Stored JSON is validated on the way out, and
records written before a field existed still load (every field past the core ones is optional).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from reloop_service.data.period import Period

Comparison = Literal["<=", ">=", ">"]
# How each rule compares its value with its threshold to pass (the dashboard and the report print it).
RULE_COMPARISON: dict[str, Comparison] = {
    "beats_constant": ">",  # constant logloss - candidate logloss
    "auc_floor": ">=",  # candidate AUC
    "max_auc_drop": "<=",  # production AUC - candidate AUC
    "max_logloss_rise": "<=",  # candidate logloss - production logloss
}


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


class HoldoutMetrics(BaseModel):
    """One model's figures on the holdout (``training.evaluation.evaluate``); NaN is stored as null."""

    model_config = ConfigDict(extra="allow")

    auc: float | None = None
    logloss: float | None = None
    calibration: float | None = None
    mean_pred: float | None = None
    ctr: float | None = None
    rows: int | None = None
    prediction: float | None = Field(default=None, description="The constant predictor's value.")

    @classmethod
    def of(cls, metrics: dict[str, Any], **extra: Any) -> HoldoutMetrics:
        clean = {k: _finite(float(v)) if isinstance(v, float) else v for k, v in {**metrics, **extra}.items()}
        return cls.model_validate(clean)


class GateRule(BaseModel):
    """One rule of the gate: ``value <comparison> threshold`` passes; a missing (non-finite) value fails."""

    name: str
    comparison: Comparison
    threshold: float
    value: float | None
    passed: bool

    @model_validator(mode="before")
    @classmethod
    def _older_records(cls, data: Any) -> Any:
        """Verdicts stored before ``comparison`` existed: the rule's name says it."""
        if isinstance(data, dict) and "comparison" not in data:
            data = {**data, "comparison": RULE_COMPARISON.get(str(data.get("name")), "<=")}
        return data

    @classmethod
    def judge(cls, name: str, threshold: float, value: float) -> GateRule:
        """Apply rule ``name`` (a key of ``RULE_COMPARISON``) to ``value``."""
        comparison = RULE_COMPARISON[name]
        finite = math.isfinite(value)
        ok = {"<=": value <= threshold, ">=": value >= threshold, ">": value > threshold}[comparison]
        return cls(
            name=name,
            comparison=comparison,
            threshold=threshold,
            value=value if finite else None,
            passed=finite and ok,
        )


class GateVerdict(BaseModel):
    """The gate's decision with its numbers: every rule, and all models' metrics on the same holdout."""

    model_config = ConfigDict(extra="allow")

    passed: bool
    failed_rules: list[str] = Field(default_factory=list)
    rules: list[GateRule] = Field(default_factory=list)
    candidate: HoldoutMetrics = Field(default_factory=HoldoutMetrics)
    production: HoldoutMetrics | None = None
    constant: HoldoutMetrics | None = None
    production_version: int | None = None
    holdout_rows: int | None = None
    holdout: str | None = Field(default=None, description="How the holdout was drawn.")


class PeriodSummary(BaseModel):
    """The run's period: its name (its start), bounds, step, and the parts of a merged catch-up."""

    model_config = ConfigDict(extra="allow")

    name: str
    start: str | None = None
    end: str | None = None
    step: str | None = None
    count: int = 1
    parts: list[str] = Field(default_factory=list)


class ReadinessSummary(BaseModel):
    """Whether the period's logs were ready to train (``cycle.readiness``), and why."""

    model_config = ConfigDict(extra="allow")

    ready: bool
    reason: str | None = None
    checks: int = 1
    mode: str | None = None
    label_delay: str | None = None


class RunSettings(BaseModel):
    """The settings that shaped one run (the report shows them beside its figures)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    loss: str | None = None
    prior_source: str | None = None
    holdout_fraction: float | None = None
    auto_promote: bool | None = None


class IngestSummary(BaseModel):
    """What the ingest step read: rows, bad rows by reason, files (a count), the quarantine folder."""

    model_config = ConfigDict(extra="allow")

    rows_read: int | None = None
    rows_valid: int | None = None
    quarantined: dict[str, int] = Field(default_factory=dict)
    files: int | None = None
    quarantine_uri: str | None = None


class PriorCoverage(BaseModel):
    """Where each training row's prior prediction came from (``cycle.steps.Coverage``)."""

    model_config = ConfigDict(extra="allow")

    source: str | None = None
    rows: int = 0
    archived: int = 0
    recomputed: int = 0
    missing: int = 0
    parent_version: int | None = None
    archived_fraction: float | None = None


class FieldCollisionSummary(BaseModel):
    """One feature field's hash-bucket collisions on the day (``data.collisions.FieldCollisions``)."""

    model_config = ConfigDict(extra="allow")

    field: str
    buckets: int
    distinct: int
    colliding: int
    flagged: bool
    colliding_fraction: float | None = None


class TrainSummary(BaseModel):
    """The train step's figures (the trainer's own notes ride along as extra keys)."""

    model_config = ConfigDict(extra="allow")

    loss: str | None = None
    cold_start: bool | None = None
    seconds: float | None = None
    train_rows: int | None = None
    holdout_rows: int | None = None
    holdout_trained_rows: int | None = None


class CycleRecord(BaseModel):
    """A cycle run's record: the run's ``details`` in the registry, its report, and ``CycleOutcome.record``.

    Written step by step as the attempt goes; a failed or skipped run carries what it got to.
    ``to_json()`` is the one plain-JSON form (stored, reported, printed).
    """

    model_config = ConfigDict(extra="allow")

    run_id: int | None = None
    cycle_date: str | None = Field(
        default=None, description="The period by its start: 2024-05-01 (daily) or 2024-05-01T13 (hourly)."
    )
    period: PeriodSummary | None = Field(
        default=None, description="A catch-up merges count > 1 periods into one cycle (parts)."
    )
    readiness: ReadinessSummary | None = None
    costs: dict[str, float] | None = Field(
        default=None, description="Seconds of each fixed cost of the cycle (claim, checkpoint load, ...)."
    )
    attempt: int | None = None
    actor: str | None = None
    owner: str | None = None
    status: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    settings: RunSettings = Field(default_factory=RunSettings)
    parent_version: int | None = None
    ingest: IngestSummary | None = None
    coverage: PriorCoverage | None = None
    collisions: list[FieldCollisionSummary] | None = None
    extra: dict[str, float | None] | None = Field(
        default=None, description="Caller-supplied figures (the demo's)."
    )
    train: TrainSummary | None = None
    gate: GateVerdict | None = None
    version: int | None = None
    decision: str | None = None
    error: str | None = None
    failed_step: str | None = None
    skip_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON: dates as ISO strings, NaN/inf and numpy scalars as JSON values."""
        out = plain_json(self.model_dump())
        assert isinstance(out, dict)
        return out


def plain_json(value: Any) -> Any:
    """Plain JSON (NaN/inf -> None, numpy scalars -> Python, dates -> ISO) for strict JSON columns."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.floating):
        return plain_json(float(value))
    if isinstance(value, np.integer | np.bool_):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_json(v) for v in value]
    if isinstance(value, date | Period):
        return value.isoformat()
    return value
