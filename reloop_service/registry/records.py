"""Typed records the registry stores as JSON: the gate's verdict and a cycle run's record.

The cycle's gate builds a ``GateVerdict`` (``cycle.steps.gate``), the register step stores it on the
version (``gate_verdict``) and inside the run's ``CycleRecord`` (``details``); the report, the API's
schemas and the dashboard read these same models. Stored JSON is validated on the way out, and
records written before a field existed still load (every field past the core ones is optional).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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


class CycleRecord(BaseModel):
    """A cycle run's record: the run's ``details`` in the registry, its report, and ``CycleOutcome.record``.

    Written step by step as the attempt goes; a failed or skipped run carries what it got to.
    """

    model_config = ConfigDict(extra="allow")

    run_id: int | None = None
    cycle_date: str | None = Field(
        default=None, description="The period by its start: 2024-05-01 (daily) or 2024-05-01T13 (hourly)."
    )
    period: dict[str, Any] | None = Field(
        default=None,
        description="name, start, end, step, count and parts (a catch-up merges count > 1 periods).",
    )
    readiness: dict[str, Any] | None = Field(
        default=None, description="Whether the period's logs were ready: ready, reason, checks, mode."
    )
    costs: dict[str, float] | None = Field(
        default=None, description="Seconds of each fixed cost of the cycle (claim, checkpoint load, ...)."
    )
    attempt: int | None = None
    actor: str | None = None
    owner: str | None = None
    status: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    parent_version: int | None = None
    ingest: dict[str, Any] | None = None
    coverage: dict[str, Any] | None = None
    collisions: list[dict[str, Any]] | None = None
    extra: dict[str, Any] | None = None
    train: dict[str, Any] | None = None
    gate: GateVerdict | None = None
    version: int | None = None
    decision: str | None = None
    error: str | None = None
    failed_step: str | None = None
    skip_reason: str | None = None
