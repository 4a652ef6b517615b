"""Demo registry for the dashboard tests, built with the real code paths.

Real tiny DNN checkpoints (training code) go through the real artifact store and are registered,
promoted and rejected through the registry store verbs; their holdout metrics are computed with the
real ``Predictor`` and ``evaluate`` on a small simulated holdout whose labels come from a hidden
"true" model. The verdicts come from the cycle's gate rules (``cycle.steps.judge``) and every
successful day goes through the cycle's own register step (``cycle.steps.register``: artifact,
version, promotion or rejection, the run's record), so the page reads what a real cycle writes;
a rejected day, and a failed day that needed a second attempt, are among them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import torch
from sqlalchemy import Engine

from reloop_service.config import Settings
from reloop_service.cycle import steps
from reloop_service.cycle.steps import judge
from reloop_service.registry import cycle_runs, store
from reloop_service.registry.db import make_engine, run_transaction, upgrade
from reloop_service.registry.entities import CycleRun, ModelVersion
from reloop_service.registry.events import CycleStatus
from reloop_service.registry.records import CycleRecord, GateVerdict, PriorCoverage, TrainSummary
from reloop_service.training.checkpoint import Checkpoint
from reloop_service.training.evaluation import evaluate
from reloop_service.training.layers import skip_table_init
from reloop_service.training.models import build_model
from reloop_service.training.predict import Predictor
from tests.support.specs import SERVING_SPEC

SPEC = SERVING_SPEC
FIRST_DAY = date(2024, 5, 1)
GATE = {"max_auc_drop": 0.01, "max_logloss_rise": 0.01, "auc_floor": 0.3}
TRUTH_SEED = 1000
EMBEDDING_STD = 0.01  # the trainer's initial row scale (training.layers)


@dataclass
class Demo:
    """What was built: version numbers by role, and the production version."""

    production: int
    previous: int
    rejected: int
    versions: list[int]
    failed_day: date


def checkpoint(seed: int, day: date, noise: float = 0.0) -> Checkpoint:
    """A tiny real DNN: the hidden "true" model's weights plus ``noise`` (seeded); 0 is the truth."""
    # The hidden "true" model: embedding rows N(0, 0.01^2) drawn first, then the MLP's init, from one
    # seeded generator (tables start as zeros and draw rows lazily in training, so draw them here).
    with skip_table_init():
        shapes = build_model("dnn", SPEC, embedding_dim=4, hidden=[8])
    tables = [
        k for k, v in shapes.state_dict().items() if v.is_floating_point() and v.dim() >= 2 and not v.any()
    ]
    torch.manual_seed(TRUTH_SEED)
    drawn = {k: torch.empty(shapes.state_dict()[k].shape).normal_(0.0, EMBEDDING_STD) for k in tables}
    with skip_table_init():
        model = build_model("dnn", SPEC, embedding_dim=4, hidden=[8])
    gen = torch.Generator().manual_seed(seed % 2)  # one direction per parity: noise shrinks along it
    state = {}
    for k, v in model.state_dict().items():
        v = drawn.get(k, v)
        state[k] = (
            (v + noise * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v).detach().clone()
        )
    return Checkpoint(
        model_name="dnn",
        model_args=model.model_args,
        state_dict=state,
        spec=SPEC.to_dict(),
        loss="reloop",
        loss_params={"alpha": 0.5},
        seed=seed,
        first_day=FIRST_DAY,
        last_day=day,
        metrics={},
    )


def holdout(n: int = 400) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Random impressions labelled by a hidden "true" model, so candidate metrics differ for real."""
    rng = np.random.default_rng(7)
    records = [
        {
            "site": f"s{rng.integers(0, 40)}",
            "device": f"d{rng.integers(0, 5)}",
            "price": float(rng.gamma(2.0, 3.0)),
            "tags": [f"t{t}" for t in rng.integers(0, 30, size=rng.integers(0, 4))],
        }
        for _ in range(n)
    ]
    truth = Predictor(checkpoint(0, FIRST_DAY)).predict_records(records)
    logit = np.log(truth / (1 - truth))
    z = (logit - logit.mean()) / (logit.std() + 1e-12)  # standardized: a strong, known signal
    sharpened = 1.0 / (1.0 + np.exp(-(2.0 * z - 1.5)))
    labels = (rng.random(n) < sharpened).astype(np.float64)
    return records, labels


def gate_settings(settings: Settings) -> Settings:
    """The demo's gate: the cycle's rules with these thresholds (an AUC floor that every version clears)."""
    return settings.model_copy(
        update={
            "gate_max_auc_drop": GATE["max_auc_drop"],
            "gate_max_logloss_rise": GATE["max_logloss_rise"],
            "gate_auc_floor": GATE["auc_floor"],
            "gate_min_gain_over_constant": None,
            "auto_promote": True,
        }
    )


def verdict(
    settings: Settings,
    cand: dict[str, Any],
    prod: dict[str, Any] | None,
    parent: int | None,
    labels: np.ndarray,
) -> GateVerdict:
    """The verdict of the cycle's own gate rules (``cycle.steps.judge``) on these metrics."""
    ctr = float(labels.mean())
    return judge(
        settings,
        candidate=cand,
        production=prod,
        constant=evaluate(labels, np.full(len(labels), ctr)),
        constant_prediction=ctr,
        production_version=parent,
        holdout_rows=len(labels),
    )


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if isinstance(v, np.floating) else v) for k, v in d.items()}


def build_demo(settings: Settings) -> Demo:
    """Six cycle days: cold start, promote, reject, fail (2 attempts), promote, promote."""
    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    try:
        return _build(settings, engine)
    finally:
        engine.dispose()


def _claim(engine: Engine, day: date, owner: str, at: datetime) -> CycleRun:
    claim = run_transaction(
        engine,
        lambda s: cycle_runs.claim_cycle(
            s, model_name="ctr", cycle_date=day, owner=owner, stale_after_s=120, now=at
        ),
    )
    assert claim.acquired, claim
    return claim.run


def _fail(engine: Engine, run: CycleRun, error: str, at: datetime, seconds: float) -> None:
    """Close ``run`` as failed at ingest, the way ``cycle.run`` records a failed attempt."""
    end = at + timedelta(seconds=seconds)
    details = CycleRecord(
        actor="scheduler",
        started_at=at.isoformat(),
        failed_step="ingest",
        finished_at=end.isoformat(),
    )
    run_transaction(
        engine,
        lambda s: cycle_runs.finish_cycle(
            s, run=run, status=CycleStatus.FAILED, error=error, details=details, now=end
        ),
    )


def _succeed(
    settings: Settings,
    engine: Engine,
    *,
    run: CycleRun,
    ckpt: Checkpoint,
    parent: ModelVersion | None,
    parent_ckpt: Checkpoint | None,
    gate: GateVerdict,
    coverage: PriorCoverage,
    started: datetime,
    seconds: float,
) -> int:
    """Register + promote/reject + finish the run through the cycle's own register step."""
    import logging

    ctx = steps.CycleContext(
        settings=settings,
        engine=engine,
        cycle_date=run.cycle_date,
        run=run,
        actor="scheduler",
        log=steps.cycle_logger("tests.dashboard", run.cycle_date, run.attempt),
    )
    trained = steps.Trained(
        checkpoint=ckpt,
        loss="reloop" if parent is not None else "bce",
        cold_start=parent is None,
        seconds=seconds - 8.0,
        info={},
    )
    record = CycleRecord(
        run_id=run.id,
        cycle_date=run.period,
        attempt=run.attempt,
        actor="scheduler",
        owner=run.owner,
        started_at=started.isoformat(),
        finished_at=(started + timedelta(seconds=seconds)).isoformat(),
        parent_version=parent.version if parent is not None else None,
        coverage=coverage,
        gate=gate,
        train=TrainSummary(seconds=seconds - 8.0, cold_start=parent is None),
    )
    logging.getLogger("tests.dashboard").setLevel(logging.WARNING)
    registered = steps.register(
        ctx,
        trained=trained,
        verdict=gate,
        parent=steps.Parent(version=parent, checkpoint=parent_ckpt),
        record=record,
    )
    return registered.version.version


BAD_PRICE = "step ingest: IngestError: dt=2024-05-04/part-0.parquet: column 'price' is string"


def _build(settings: Settings, engine: Engine) -> Demo:
    settings = gate_settings(settings)
    records, labels = holdout()
    base = datetime(2024, 5, 2, 2, 0, tzinfo=UTC)
    plan: list[tuple[int, float, str]] = [
        (11, 0.45, "ok"),
        (13, 0.3, "ok"),
        (12, 0.9, "reject"),
        (0, 0.0, "fail"),
        (15, 0.2, "ok"),
        (17, 0.12, "ok"),
    ]
    prod: int | None = None
    prod_ckpt: Checkpoint | None = None
    prod_version: ModelVersion | None = None
    previous = rejected = 0
    versions: list[int] = []
    failed_day = FIRST_DAY
    for i, (seed, noise, kind) in enumerate(plan):
        day = FIRST_DAY + timedelta(days=i)
        started = base + timedelta(days=i)
        owner = f"demo-host:1:scheduler:{i:08x}"
        run = _claim(engine, day, owner, started)
        if kind == "fail":  # two attempts, both fail on a bad file: no version, production unchanged
            failed_day = day
            _fail(engine, run, BAD_PRICE, started, 4.0)
            retry_at = started + timedelta(seconds=10)
            _fail(
                engine,
                _claim(engine, day, owner, retry_at),
                BAD_PRICE + " (expected a number)",
                retry_at,
                3.5,
            )
            continue
        ckpt = checkpoint(seed, day, noise)
        cand = _clean(evaluate(labels, Predictor(ckpt).predict_records(records)))
        prod_m = (
            _clean(evaluate(labels, Predictor(prod_ckpt).predict_records(records))) if prod_ckpt else None
        )
        gate = verdict(settings, cand, prod_m, prod, labels)
        if gate.passed != (kind != "reject"):
            raise AssertionError(f"demo day {day}: the gate said {gate.passed}, the plan {kind}: {gate}")
        coverage = PriorCoverage(
            source="archive",
            rows=5000,
            archived=4700 if prod else 0,
            recomputed=0,
            missing=300 if prod else 5000,
            parent_version=prod,
        )
        number = _succeed(
            settings,
            engine,
            run=run,
            ckpt=ckpt,
            parent=prod_version,
            parent_ckpt=prod_ckpt,
            gate=gate,
            coverage=coverage,
            started=started,
            seconds=40.0 + 7 * i,
        )
        versions.append(number)
        if gate.passed:
            previous, prod, prod_ckpt = prod or 0, number, ckpt
            prod_version = run_transaction(
                engine, lambda s, n=number: store.get_version(s, model_name="ctr", version=n)
            )
        else:
            rejected = number
    assert prod is not None
    return Demo(
        production=prod, previous=previous, rejected=rejected, versions=versions, failed_day=failed_day
    )
