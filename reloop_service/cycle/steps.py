"""The daily cycle, one function per step: claim, ingest, fetch priors, train, gate, register, report.

Each step takes what it needs explicitly and returns a small frozen result; ``run.py`` chains them,
owns the claim's heartbeat and the retries, and turns any exception into a failed run. Nothing a
step does is visible to serving until the single ``register`` transaction commits: the candidate's
artifact is written first (content-addressed, atomic), then the version row, the promotion (or the
rejection) and the run's success go in one transaction, so a failure leaves no half-registered
version and production unchanged. The prediction archive is only ever read here.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import Engine

from reloop_service.config import Settings
from reloop_service.data.collisions import CollisionCounter
from reloop_service.data.period import Period
from reloop_service.data.spec import FeatureSpec, default_spec, load_spec
from reloop_service.data.split import holdout_mask
from reloop_service.data.transforms import labels_of
from reloop_service.registry import cycle_runs, store
from reloop_service.registry.db import run_transaction, session_scope
from reloop_service.registry.entities import CycleClaim, CycleRun, ModelVersion
from reloop_service.registry.events import CycleStatus
from reloop_service.registry.records import (
    CycleRecord,
    FieldCollisionSummary,
    GateRule,
    GateVerdict,
    HoldoutMetrics,
    IngestSummary,
    plain_json,
)
from reloop_service.registry.service import artifact_store

if TYPE_CHECKING:
    from reloop_service.cycle.run_report import ReportPaths
    from reloop_service.training.checkpoint import Checkpoint
    from reloop_service.training.distributed import DayTrainer

# The training modules (torch, about a second and a half to import) load in the steps that train or
# (de)serialize a model: a run that finds its date held or done exits without them.

PRIOR_LOSSES = frozenset({"reloop", "distill"})
READ_BATCH_ROWS = 65_536  # rows per Arrow batch when streaming a day (training batches are re-cut)
STAGED_ROW_GROUPS_PER_RANK = 8
MIN_ROW_GROUP_ROWS = 1024


class CycleCancelled(RuntimeError):
    """The process is stopping (SIGTERM): the run ends as failed at a step boundary, claim released."""


class CycleStepError(RuntimeError):
    """A step failed for a reason worth stating plainly (the message names the step and the cause)."""


class DaySkipped(RuntimeError):
    """The day is not trained on, by design: no partition, too few rows, or too few of one label.

    The run ends as ``skipped`` with ``code`` and the message; production and the registry's versions
    are untouched, and a scheduler, backfill or replay goes on with the next day.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------------------- context
def local_trainer() -> DayTrainer:
    """The one-process trainer (torch loads here, not when the cycle modules are imported)."""
    from reloop_service.training.distributed import LocalTrainer

    return LocalTrainer()


@dataclass
class CycleContext:
    """What every step of one attempt shares: settings, the claim, a prefixed logger, stop signals."""

    settings: Settings
    engine: Engine
    cycle_date: date
    run: CycleRun
    actor: str
    log: logging.LoggerAdapter[logging.Logger]
    stop: threading.Event | None = None
    claim_lost: threading.Event = field(default_factory=threading.Event)
    finishing: threading.Event = field(default_factory=threading.Event)
    workdir: Path | None = None
    trainer: DayTrainer = field(default_factory=local_trainer)
    period: Period | None = None  # the period this cycle trains on (default: the day ``cycle_date``)

    def __post_init__(self) -> None:
        if self.period is None:
            self.period = Period.of_day(self.cycle_date)

    @property
    def the_period(self) -> Period:
        assert self.period is not None
        return self.period

    @property
    def last_day(self) -> date:
        """The calendar day of the period's last instant (the data watermark's last day)."""
        return (self.the_period.end - timedelta(microseconds=1)).date()

    def check(self, step: str) -> None:
        """Raise at a step boundary when the process is stopping or another owner took the date."""
        if self.stop is not None and self.stop.is_set():
            raise CycleCancelled(f"cancelled before step {step!r}: the process is shutting down")
        if self.claim_lost.is_set():
            raise CycleStepError(f"claim lost before step {step!r}: another owner took over this date")


class CycleLogAdapter(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every line with the cycle date and attempt, and puts both on the record as extras."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = dict(self.extra or {})
        kwargs.setdefault("extra", {}).update(extra)
        return f"[cycle {extra.get('cycle_date')} attempt {extra.get('attempt')}] {msg}", kwargs


def cycle_logger(name: str, cycle_date: date | Period, attempt: int | str) -> CycleLogAdapter:
    """A logger whose lines carry ``cycle_date`` (the period's name) and ``attempt``."""
    return CycleLogAdapter(
        logging.getLogger(name), {"cycle_date": cycle_date.isoformat(), "attempt": attempt}
    )


# ----------------------------------------------------------------------------------------- claim
def claim(
    *, settings: Settings, engine: Engine, cycle_date: date | Period, owner: str, force: bool = False
) -> CycleClaim:
    """Step 1: claim the period (a date: that day) in the cycle-runs table (one concurrent claimer wins)."""
    with session_scope(engine) as session:
        return cycle_runs.claim_cycle(
            session,
            cycle_date=cycle_date,
            owner=owner,
            stale_after_s=settings.stale_after_s,
            force=force,
            model_name=settings.model_name,
        )


def heartbeat(*, engine: Engine, run: CycleRun) -> CycleRun:
    """Refresh the claim's heartbeat (``ClaimLostError`` when another owner took over)."""
    with session_scope(engine) as session:
        return cycle_runs.heartbeat_cycle(session, run=run)


def fail_run(*, engine: Engine, run: CycleRun, error: str, details: CycleRecord) -> CycleRun:
    """Close the claim as failed with its error; production and the archive are not touched."""
    with session_scope(engine) as session:
        return cycle_runs.finish_cycle(
            session, run=run, status=CycleStatus.FAILED, error=error[:4000], details=details
        )


def skip_run(*, engine: Engine, run: CycleRun, code: str, message: str, details: CycleRecord) -> CycleRun:
    """Close the claim as skipped with its reason; the date can be claimed again (late data)."""
    with session_scope(engine) as session:
        return cycle_runs.finish_cycle(
            session,
            run=run,
            status=CycleStatus.SKIPPED,
            error=f"{code}: {message}"[:4000],
            details=details,
        )


# ---------------------------------------------------------------------------------------- parent
@dataclass(frozen=True)
class Parent:
    """The production version when the cycle started (``None`` fields on a cold start)."""

    version: ModelVersion | None
    checkpoint: Checkpoint | None

    @property
    def number(self) -> int | None:
        return self.version.version if self.version is not None else None


def configured_spec(settings: Settings) -> FeatureSpec:
    """The user's feature spec (``spec_path``) or the demo simulator's."""
    return load_spec(settings.spec_path) if settings.spec_path else default_spec()


def resolve_parent(ctx: CycleContext) -> Parent:
    """The version in production now, with its checkpoint (sha256 verified); none on a cold start."""
    from reloop_service.training.checkpoint import checkpoint_from_bytes

    with session_scope(ctx.engine, readonly=True) as session:
        production = store.get_production(session, model_name=ctx.settings.model_name)
    if production is None:
        ctx.log.info("no production version: cold start")
        return Parent(version=None, checkpoint=None)
    info = production.version
    data = artifact_store(ctx.settings).get(info.artifact)
    ctx.log.info("parent: production version %d (%s)", info.version, info.artifact.uri)
    return Parent(version=info, checkpoint=checkpoint_from_bytes(data))


# ---------------------------------------------------------------------------------------- ingest
@dataclass
class Ingested:
    """The day's validated click log: a re-iterable stream of valid rows, and its ingest report."""

    day_log: Any
    spec: FeatureSpec

    def report(self) -> IngestSummary:
        r = self.day_log.report
        return IngestSummary(
            rows_read=int(r.rows_read),
            rows_valid=int(r.rows_valid),
            quarantined={str(k): int(v) for k, v in dict(r.quarantined).items()},
            files=len(r.files) if not isinstance(r.files, int) else int(r.files),
            quarantine_uri=r.quarantine_uri,
        )


def ingest(ctx: CycleContext, *, parent: Parent) -> Ingested:
    """Step 2: open the day with the core validation (bad rows quarantined, counted in the report).

    The parent's spec (with its frozen numeric statistics) decides the columns once a model exists;
    the configured spec is used only for the very first training.
    """
    from reloop_service.data.ingest import open_days

    spec = (
        parent.checkpoint.feature_spec() if parent.checkpoint is not None else configured_spec(ctx.settings)
    )
    from reloop_service.data.ingest import EmptyDayError

    try:
        day_log = open_days(
            ctx.settings.resolved_logs_uri,
            [ctx.the_period],
            spec,
            storage_options=ctx.settings.storage_options(),
            batch_size=READ_BATCH_ROWS,
            allow_empty_parts=ctx.the_period.count > 1,  # a merged catch-up may hold an empty hour
        )
    except EmptyDayError as exc:
        raise DaySkipped("no_data", str(exc)) from exc
    return Ingested(day_log=day_log, spec=spec)


# ---------------------------------------------------------------------------------------- priors
@dataclass(frozen=True)
class Coverage:
    """Where each training row's prior prediction came from."""

    source: str
    rows: int
    archived: int
    recomputed: int
    missing: int
    parent_version: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "rows": self.rows,
            "archived": self.archived,
            "recomputed": self.recomputed,
            "missing": self.missing,
            "parent_version": self.parent_version,
            "archived_fraction": self.archived / self.rows if self.rows else 0.0,
        }


@dataclass
class PreparedDay:
    """The day with a ``prior_ctr`` column, staged as two local Parquet files: training and holdout.

    The holdout is a hash sample of impression ids (``data.split``), so it covers every hour of the
    day; the gate scores it, and once the gate passes the candidate trains on it too.
    """

    spec: FeatureSpec
    path: Path
    holdout_path: Path
    train_rows: int
    holdout_rows: int
    positives: int
    train_positives: int
    coverage: Coverage
    ingest: IngestSummary
    collisions: list[FieldCollisionSummary] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.train_rows + self.holdout_rows

    @property
    def ctr(self) -> float:
        """The day's click rate over every valid row (the constant predictor's value)."""
        return self.positives / self.rows if self.rows else float("nan")

    def train_batches(self) -> Iterator[pa.RecordBatch]:
        """The training rows (re-iterable: call again for another epoch)."""
        return pq.ParquetFile(self.path).iter_batches(batch_size=READ_BATCH_ROWS)

    def holdout_batches(self) -> Iterator[pa.RecordBatch]:
        return pq.ParquetFile(self.holdout_path).iter_batches(batch_size=READ_BATCH_ROWS)

    def holdout(self) -> pa.Table:
        """The held-out rows, whole (kept in memory for both gate models)."""
        table = pq.read_table(self.holdout_path)
        if table.num_rows == 0:
            raise CycleStepError("holdout is empty")
        return table


def archive_window(cycle_date: date, parent_created: date) -> tuple[date, date]:
    """Serving days (archive partitions, UTC) where the parent can have scored ``cycle_date``'s impressions.

    Normally the day itself and one day either side (time zones, midnight). A parent created after
    the day (a backfill, or the demo's simulated days served on today's clock) can only have
    served from its creation on, so the window moves there.
    """
    start = max(cycle_date, parent_created) - timedelta(days=1)
    end = max(cycle_date, parent_created) + timedelta(days=1)
    return start, end


def load_archived_priors(
    ctx: CycleContext, *, parent_version: int, parent_created: date
) -> tuple[pa.Array, pa.Array]:
    """The parent's archived predictions: (impression ids, ctr), the latest serving per id.

    Only partitions in ``archive_window`` are read; the caller keeps the rows of the day by id.
    """
    from reloop_service.data.archive import read_predictions

    ids: list[pa.Array] = []
    ctrs: list[pa.Array] = []
    ts: list[pa.Array] = []
    start, end = archive_window(ctx.cycle_date, parent_created)
    end = max(end, ctx.last_day + timedelta(days=1))  # a merged period may span days
    for batch in read_predictions(
        ctx.settings.resolved_archive_uri,
        version=parent_version,
        start=start,
        end=end,
        storage_options=ctx.settings.storage_options(),
    ):
        ids.append(batch.column("impression_id"))
        ctrs.append(batch.column("ctr"))
        ts.append(batch.column("ts"))
    if not ids:
        return pa.array([], pa.string()), pa.array([], pa.float64())
    table = pa.table(
        {
            "impression_id": pa.concat_arrays(ids),
            "ctr": pa.concat_arrays(ctrs),
            "ts": pa.concat_arrays(ts),
        }
    )
    # A client retry can archive one impression twice: keep the latest serving.
    table = table.sort_by([("impression_id", "ascending"), ("ts", "descending")])
    id_col = table.column("impression_id").combine_chunks()
    keep = np.ones(len(table), dtype=bool)
    if len(table) > 1:
        same = pc.equal(id_col.slice(1), id_col.slice(0, len(table) - 1)).to_numpy(zero_copy_only=False)
        keep[1:] = ~same
    table = table.filter(pa.array(keep))
    return table.column("impression_id").combine_chunks(), table.column("ctr").combine_chunks()


def fetch_priors(ctx: CycleContext, *, ingested: Ingested, parent: Parent) -> PreparedDay:
    """Step 3: join each row with the parent's prediction, stage the day, and split it by event time.

    Archive first (what production actually served), then batch inference with the parent's
    artifact for rows the archive lacks or another version served, as ``prior_source`` allows.
    A cold start has no parent: every prior is missing and training is plain BCE.
    """
    from reloop_service.training.trainer import PRIOR_COLUMN

    settings = ctx.settings
    spec = ingested.spec
    source = settings.prior_source
    use_archive = parent.version is not None and source in ("archive", "archive_then_recompute")
    use_recompute = parent.checkpoint is not None and source in ("recompute", "archive_then_recompute")
    archive_ids = pa.array([], pa.string())
    archive_ctr = pa.array([], pa.float64())
    if use_archive and parent.version is not None:
        archive_ids, archive_ctr = load_archived_priors(
            ctx, parent_version=parent.version.version, parent_created=parent.version.created_at.date()
        )
        ctx.log.info("archive: %d predictions of version %d", len(archive_ids), parent.version.version)
    predictor = None
    if use_recompute and parent.checkpoint is not None:
        from reloop_service.training.predict import Predictor

        predictor = Predictor(parent.checkpoint)

    assert ctx.workdir is not None
    path, holdout_path = ctx.workdir / "train.parquet", ctx.workdir / "holdout.parquet"
    writers: dict[bool, pq.ParquetWriter] = {}
    counts = {True: 0, False: 0}  # rows by "held out"
    positives = {True: 0, False: 0}
    collisions = CollisionCounter(spec, warn_fraction=settings.collision_warn_fraction)
    rows = archived = recomputed = missing = 0
    # Row groups are the unit a data-parallel training deals out to its ranks: on N ranks a day is
    # staged in about STAGED_ROW_GROUPS_PER_RANK x N of them (at least MIN_ROW_GROUP_ROWS rows each) so
    # every rank gets a share; in one process the batches are written as they come.
    world = ctx.trainer.world_size
    group_rows = (
        None
        if world <= 1
        else max(
            MIN_ROW_GROUP_ROWS,
            math.ceil(ingested.day_log.report.rows_valid / (STAGED_ROW_GROUPS_PER_RANK * world)),
        )
    )
    try:
        for batch in ingested.day_log.iter_batches():
            n = batch.num_rows
            if n == 0:
                continue
            collisions.add(batch)
            prior = np.full(n, np.nan, dtype=np.float64)
            if len(archive_ids):
                idx = pc.index_in(batch.column(spec.impression_id).cast(pa.string()), value_set=archive_ids)
                hit = idx.is_valid().to_numpy(zero_copy_only=False)
                if hit.any():
                    prior[hit] = archive_ctr.take(idx.filter(idx.is_valid())).to_numpy(zero_copy_only=False)
                archived += int(hit.sum())
            need = np.isnan(prior)
            if predictor is not None and need.any():
                sub = batch.filter(pa.array(need)) if not need.all() else batch
                prior[need] = np.asarray(predictor.predict_batch(sub), dtype=np.float64)
                recomputed += int(need.sum())
            missing += int(np.isnan(prior).sum())
            column = pa.array(prior, pa.float64(), mask=np.isnan(prior))
            if PRIOR_COLUMN in batch.schema.names:
                batch = batch.drop_columns([PRIOR_COLUMN])
            out = batch.append_column(PRIOR_COLUMN, column)
            held = holdout_mask(batch.column(spec.impression_id), settings.holdout_fraction)
            labels = labels_of(spec, batch).numpy()
            for side, target in ((False, path), (True, holdout_path)):
                keep = held if side else ~held
                if not keep.any():
                    continue
                if side not in writers:
                    writers[side] = pq.ParquetWriter(target, out.schema)
                writers[side].write_batch(out.filter(pa.array(keep)), row_group_size=group_rows)
                counts[side] += int(keep.sum())
                positives[side] += int(labels[keep].sum())
            rows += n
    finally:
        for w in writers.values():
            w.close()
    report = ingested.report()
    fields = collisions.report()
    for c in (c for c in fields if c.flagged):
        ctx.log.warning("bucket collisions: %s; raise its buckets in the feature spec", c.describe())
    _refuse_small_day(
        settings,
        ctx.the_period.describe(),
        rows=rows,
        positives=positives[True] + positives[False],
        holdout_rows=counts[True],
        holdout_positives=positives[True],
        train_rows=counts[False],
        report=report,
    )
    coverage = Coverage(
        source=source if parent.version is not None else "cold_start",
        rows=rows,
        archived=archived,
        recomputed=recomputed,
        missing=missing,
        parent_version=parent.number,
    )
    ctx.log.info(
        "priors: %d rows, archived %d, recomputed %d, missing %d; holdout %d rows (hash sample %.0f%%)",
        rows,
        archived,
        recomputed,
        missing,
        counts[True],
        100 * settings.holdout_fraction,
    )
    return PreparedDay(
        spec=spec,
        path=path,
        holdout_path=holdout_path,
        train_rows=counts[False],
        holdout_rows=counts[True],
        positives=positives[True] + positives[False],
        train_positives=positives[False],
        coverage=coverage,
        ingest=report,
        collisions=[
            FieldCollisionSummary(**asdict(c), colliding_fraction=round(c.colliding_fraction, 6))
            for c in fields
        ],
    )


def _refuse_small_day(
    settings: Settings,
    day: str,
    *,
    rows: int,
    positives: int,
    holdout_rows: int,
    holdout_positives: int,
    train_rows: int,
    report: IngestSummary,
) -> None:
    """Raise ``DaySkipped`` before training when the day cannot train or be gated meaningfully."""
    negatives = rows - positives
    if rows == 0:
        quarantined = sum(report.quarantined.values())
        raise DaySkipped("no_data", f"no valid rows for {day} ({quarantined} quarantined)")
    if rows < settings.min_day_rows:
        raise DaySkipped(
            "too_few_rows",
            f"{day} has {rows} valid rows, fewer than RELOOP_MIN_DAY_ROWS={settings.min_day_rows}",
        )
    if positives < settings.min_positives:
        raise DaySkipped(
            "too_few_positives",
            f"{day} has {positives} clicks in {rows} rows, "
            f"fewer than RELOOP_MIN_POSITIVES={settings.min_positives}",
        )
    if negatives < settings.min_negatives:
        raise DaySkipped(
            "too_few_negatives",
            f"{day} has {negatives} non-clicks in {rows} rows, "
            f"fewer than RELOOP_MIN_NEGATIVES={settings.min_negatives}",
        )
    if train_rows == 0 or holdout_positives == 0 or holdout_positives == holdout_rows:
        raise DaySkipped(
            "holdout_unusable",
            f"{day}: the {holdout_rows}-row holdout ({settings.holdout_fraction:.0%} of {rows} rows) has "
            f"{holdout_positives} clicks: the gate needs both labels (raise RELOOP_HOLDOUT_FRACTION "
            "or RELOOP_MIN_DAY_ROWS)",
        )


# ----------------------------------------------------------------------------------------- train
@dataclass(frozen=True)
class Trained:
    """The candidate checkpoint and how it was trained."""

    checkpoint: Checkpoint
    loss: str
    cold_start: bool
    seconds: float
    info: dict[str, Any]


def train_candidate(ctx: CycleContext, *, prepared: PreparedDay, parent: Parent) -> Trained:
    """Step 4: train the candidate warm-started from the parent (plain BCE on a cold start).

    Numeric statistics are fitted on the very first training only and then stay frozen in the
    checkpoint's spec, so a feature keeps its meaning across versions.
    """
    from reloop_service.data.transforms import fit_numeric
    from reloop_service.training.distributed import DayJob, StagedDay
    from reloop_service.training.recipe import day_schedule, recipe_config

    settings = ctx.settings
    # ``warm_start=False`` (the replay's full_retrain) trains from scratch on whatever the day holds.
    init = parent.checkpoint if settings.warm_start else None
    cold = init is None
    spec = prepared.spec
    if cold and not spec.is_fitted:
        spec = fit_numeric(spec, prepared.train_batches())
        ctx.log.info("fitted numeric statistics on the first training")
    loss = "bce" if cold else settings.loss
    config = recipe_config(settings, loss=loss, rows=prepared.train_rows, cold=cold)
    if settings.train_on_holdout:
        # The day's decay spans the holdout pass too: the candidate stops part-way down it.
        config, _ = day_schedule(config, train_rows=prepared.train_rows, holdout_rows=prepared.holdout_rows)
    started = time.perf_counter()
    # One process normally; under torchrun (``reloop cycle run --nproc N``) every rank trains its
    # shard of the staged day's row groups and this rank (0) gets the common result.
    result = ctx.trainer.train_day(
        DayJob(
            config=config,
            spec=spec,
            day=StagedDay(uri=str(prepared.path), batch_size=READ_BATCH_ROWS),
            batches=prepared.train_batches,
            init=init,
            first_day=ctx.cycle_date if cold else None,
            last_day=ctx.last_day,
            base_rate=prepared.train_positives / max(prepared.train_rows, 1),
        )
    )
    seconds = time.perf_counter() - started
    ctx.log.info(
        "trained %s on %d rows in %.1fs (loss %s, %d epoch(s), batch %d)",
        settings.model,
        result.rows,
        seconds,
        loss,
        config.epochs,
        config.batch_size,
    )
    return Trained(
        checkpoint=result.checkpoint,
        loss=loss,
        cold_start=cold,
        seconds=seconds,
        info={
            "rows": int(result.rows),
            "epochs": config.epochs,
            "batch_size": config.batch_size,
            "first_batch_loss": _finite(result.first_batch_loss),
            "trainer_prior_coverage": _finite(result.coverage),
            "notes": list(result.notes),
        },
    )


def train_holdout(ctx: CycleContext, *, prepared: PreparedDay, trained: Trained) -> Trained:
    """Step 5b: once the gate has passed, one pass of the candidate over the holdout rows.

    The gate judged the candidate on rows it had not seen; those rows are the day's freshest
    evidence too, so the version that ships learns from them (the verdict keeps the figures of the
    model it judged). Skipped with ``train_on_holdout=False``.
    """
    from reloop_service.training.recipe import day_schedule, recipe_config
    from reloop_service.training.trainer import train as train_rows

    # The same step size as the training it continues (the batch of the day's training rows): with
    # the holdout's own, smaller batch a full retrain's last pass took as many steps as an epoch on
    # a tenth of the rows (ml100k full retrain 0.705 instead of 0.713 pooled AUC).
    # It continues the candidate's learning-rate schedule (none after a cold start) to its end.
    config = recipe_config(ctx.settings, loss=trained.loss, rows=prepared.train_rows, cold=trained.cold_start)
    _, config = day_schedule(config, train_rows=prepared.train_rows, holdout_rows=prepared.holdout_rows)
    started = time.perf_counter()
    result = train_rows(
        config=config,
        spec=None,
        batches=prepared.holdout_batches,
        init=trained.checkpoint,
        last_day=ctx.last_day,
        progress=False,
    )
    seconds = time.perf_counter() - started
    ctx.log.info("trained on the %d holdout rows in %.1fs", result.rows, seconds)
    checkpoint = result.checkpoint
    checkpoint.metrics = {
        **trained.checkpoint.metrics,
        "train_rows": int(trained.info["rows"]) + int(result.rows),
        "holdout_trained_rows": int(result.rows),
    }
    return replace(
        trained,
        checkpoint=checkpoint,
        seconds=trained.seconds + seconds,
        info={**trained.info, "holdout_trained_rows": int(result.rows)},
    )


def _finite(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# ------------------------------------------------------------------------------------------ gate
def gate(ctx: CycleContext, *, prepared: PreparedDay, candidate: Checkpoint, parent: Parent) -> GateVerdict:
    """Step 5: evaluate candidate, parent and the constant predictor on the same holdout; apply the rules.

    The constant predictor (the training rows' click rate) is the floor every model must beat in
    logloss, cold start included: a model that cannot is worse than knowing nothing. Every rule
    fails on a non-finite value (a NaN AUC passes no comparison). The verdict always carries its
    numbers: ``passed``, every rule with threshold and value, and all models' metrics.
    """
    from reloop_service.training.evaluation import evaluate
    from reloop_service.training.predict import Predictor

    settings = ctx.settings
    holdout = prepared.holdout()
    y = labels_of(prepared.spec, holdout).numpy()
    cand = evaluate(y, Predictor(candidate).predict_batch(holdout))
    prod = evaluate(y, Predictor(parent.checkpoint).predict_batch(holdout)) if parent.checkpoint else None
    base_ctr = min(max(prepared.train_positives / max(prepared.train_rows, 1), 1e-6), 1 - 1e-6)
    const = evaluate(y, np.full(len(y), base_ctr))
    verdict = judge(
        settings,
        candidate=cand,
        production=prod,
        constant=const,
        constant_prediction=base_ctr,
        production_version=parent.number,
        holdout_rows=len(y),
    )
    failed = verdict.failed_rules
    ctx.log.info(
        "gate %s: candidate auc %.4f logloss %.4f; constant logloss %.4f; production %s",
        "passed" if not failed else f"rejected ({', '.join(failed)})",
        cand["auc"],
        cand["logloss"],
        const["logloss"],
        "none" if prod is None else f"auc {prod['auc']:.4f} logloss {prod['logloss']:.4f}",
    )
    return verdict


def judge(
    settings: Settings,
    *,
    candidate: Mapping[str, Any],
    production: Mapping[str, Any] | None,
    constant: Mapping[str, Any],
    constant_prediction: float,
    production_version: int | None,
    holdout_rows: int,
) -> GateVerdict:
    """The gate's rules (``RELOOP_GATE_*``) applied to the three models' holdout metrics."""
    cand, prod, const = candidate, production, constant
    rules: list[GateRule] = []
    if settings.gate_min_gain_over_constant is not None:
        gain = float(const["logloss"]) - float(cand["logloss"])
        rules.append(GateRule.judge("beats_constant", settings.gate_min_gain_over_constant, gain))
    if settings.gate_auc_floor is not None:
        rules.append(GateRule.judge("auc_floor", settings.gate_auc_floor, float(cand["auc"])))
    if prod is not None and settings.gate_max_auc_drop is not None:
        drop = float(prod["auc"]) - float(cand["auc"])
        rules.append(GateRule.judge("max_auc_drop", settings.gate_max_auc_drop, drop))
    if prod is not None and settings.gate_max_logloss_rise is not None:
        rise = float(cand["logloss"]) - float(prod["logloss"])
        rules.append(GateRule.judge("max_logloss_rise", settings.gate_max_logloss_rise, rise))
    failed = [r.name for r in rules if not r.passed]
    verdict = GateVerdict(
        passed=not failed,
        failed_rules=failed,
        rules=rules,
        candidate=HoldoutMetrics.of(dict(cand)),
        production=HoldoutMetrics.of(dict(prod)) if prod is not None else None,
        constant=HoldoutMetrics.of(dict(const), prediction=constant_prediction),
        production_version=production_version,
        holdout_rows=holdout_rows,
        holdout=f"hash sample of impression ids, {settings.holdout_fraction:.0%}",
    )
    return verdict


# -------------------------------------------------------------------------------------- register
@dataclass(frozen=True)
class Registered:
    """What the register step committed."""

    version: ModelVersion
    decision: str  # promoted | rejected | registered (passed, auto-promotion off)
    run: CycleRun
    seconds: dict[str, float] = field(default_factory=dict)  # artifact_write, registry_tx


def register(
    ctx: CycleContext,
    *,
    trained: Trained,
    verdict: GateVerdict,
    parent: Parent,
    record: CycleRecord,
) -> Registered:
    """Step 6: write the artifact, then register + promote/reject + finish the run in ONE transaction.

    The promotion is a compare-and-set against the parent: if production moved during the cycle
    (an operator promoted or rolled back), the whole transaction rolls back and the run fails.
    """
    from reloop_service.training.checkpoint import checkpoint_to_bytes

    settings = ctx.settings
    started = time.perf_counter()
    checkpoint = trained.checkpoint
    cand = verdict.candidate.model_dump(mode="json")
    checkpoint.metrics = {**checkpoint.metrics, "holdout": cand}
    data = checkpoint_to_bytes(checkpoint, compress=True)
    ref = artifact_store(settings).put(
        data, f"{settings.model_name}/cycle-{file_stem(ctx.the_period)}-run{ctx.run.id}.ckpt"
    )
    written = time.perf_counter()
    ctx.log.info("artifact written: %s (%d bytes)", ref.uri, ref.size)
    spec_hash = checkpoint.feature_spec().fingerprint()
    metrics = {
        "auc": verdict.candidate.auc,
        "logloss": verdict.candidate.logloss,
        "calibration": verdict.candidate.calibration,
        "rows": record.coverage.rows if record.coverage else None,
        "holdout_rows": verdict.holdout_rows,
        "prior_coverage": record.coverage.model_dump() if record.coverage else None,
        "production_on_holdout": verdict.production.model_dump(mode="json") if verdict.production else None,
    }
    train_config = {
        "model": checkpoint.model_name,
        "model_args": checkpoint.model_args,
        "loss": trained.loss,
        "loss_params": checkpoint.loss_params,
        "seed": checkpoint.seed,
        "cold_start": trained.cold_start,
        **checkpoint.train_config,
    }
    passed = verdict.passed
    stored_verdict = verdict.model_dump(mode="json")

    def tx(session: Any) -> Registered:
        version = store.register_version(
            session,
            model_name=settings.model_name,
            artifact=ref,
            actor=ctx.actor,
            reason=f"cycle {ctx.the_period.describe()}",
            parent_version=parent.number,
            feature_spec_hash=spec_hash,
            train_config=plain_json(train_config),
            data_first_day=checkpoint.first_day or ctx.cycle_date,
            data_last_day=checkpoint.last_day or ctx.last_day,
            metrics=plain_json(metrics),
            gate_verdict=plain_json(stored_verdict),
            cycle_date=ctx.cycle_date,
            period=ctx.the_period.name,
        )
        if passed and settings.auto_promote:
            store.promote(
                session,
                model_name=settings.model_name,
                version=version.version,
                actor=ctx.actor,
                reason=f"cycle {ctx.the_period}: gate passed",
                expected_current=parent.number,
            )
            decision = "promoted"
        elif passed:
            decision = "registered"
        else:
            store.reject_version(
                session,
                model_name=settings.model_name,
                version=version.version,
                actor=ctx.actor,
                reason=f"cycle {ctx.the_period}: gate rejected ({', '.join(verdict.failed_rules)})",
                details={"verdict": plain_json(stored_verdict)},
            )
            decision = "rejected"
        run = cycle_runs.finish_cycle(
            session,
            run=ctx.run,
            status=CycleStatus.SUCCEEDED,
            produced_version=version.version,
            details=record.model_copy(update={"version": version.version, "decision": decision}),
        )
        return Registered(version=version, decision=decision, run=run)

    # The heartbeat stands aside while this transaction closes the claim (it would only queue on
    # the same row and then find the run finished).
    ctx.finishing.set()
    try:
        registered = run_transaction(ctx.engine, tx)
    finally:
        ctx.finishing.clear()
    registered = replace(
        registered,
        seconds={"artifact_write": written - started, "registry_tx": time.perf_counter() - written},
    )
    ctx.log.info("registered version %d: %s", registered.version.version, registered.decision)
    return registered


# ---------------------------------------------------------------------------------------- report
def report(*, settings: Settings, record: CycleRecord) -> ReportPaths:
    """Step 7: the run's JSON and markdown, and the refreshed history plot."""
    from reloop_service.cycle.run_report import write_report

    return write_report(settings=settings, record=record)


# --------------------------------------------------------------------------------------- workdir
def file_stem(period: date | Period) -> str:
    """A period's name as file names carry it (``2024-05-01``, ``2024-05-01T13``, ``2024-05-01T1330``)."""
    return period.isoformat().replace(":", "")


def make_workdir(settings: Settings, cycle_date: date | Period, run: CycleRun) -> Path:
    """A private local scratch folder for one attempt (removed when it ends)."""
    base = (settings.data_dir / "work").resolve()
    base.mkdir(parents=True, exist_ok=True)
    return Path(
        tempfile.mkdtemp(prefix=f"cycle-{file_stem(cycle_date)}-run{run.id}-a{run.attempt}-", dir=base)
    )


def remove_workdir(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
