"""``run_cycle``: one period's cycle, exactly once, never leaving production worse or half-updated.

A period is a day by default, an hour with ``RELOOP_CYCLE_PERIOD=1h`` (``data/period.py``); it is named
by its start and claimed by that name. Flow of one call: claim the period (step 1); while holding it,
a heartbeat thread keeps the claim fresh; each attempt runs steps 2-7 in order (``steps.py``); an
attempt that fails closes the run as failed with its error and, while attempts remain
(``cycle_attempts``, exponential backoff from ``cycle_backoff_s``), re-claims the
period (the registry bumps the attempt) and tries again.
Correctness comes from the claim, not from whoever called: the scheduler, the CLI, a backfill
and the admin API all come through here.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from reloop_service.config import Settings
from reloop_service.cycle import steps
from reloop_service.cycle.readiness import Clock, SystemClock, wait_until_ready
from reloop_service.cycle.run_report import ReportPaths
from reloop_service.data.period import Period
from reloop_service.registry import cycle_runs
from reloop_service.registry.db import session_scope
from reloop_service.registry.entities import CycleClaim, CycleRun
from reloop_service.registry.errors import ClaimLostError, ConflictError, RegistryError
from reloop_service.registry.events import CycleStatus
from reloop_service.registry.records import (
    CycleRecord,
    GateVerdict,
    PeriodSummary,
    PriorCoverage,
    ReadinessSummary,
    RunSettings,
    TrainSummary,
    plain_json,
)
from reloop_service.registry.service import open_registry

if TYPE_CHECKING:
    from reloop_service.training.distributed import DayTrainer, RankReport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CycleOutcome:
    """What happened to one ``run_cycle`` call.

    ``status``: ``succeeded`` or ``failed`` (this call ran the cycle), or ``skipped`` (it did not:
    ``reason`` says ``succeeded`` for a date already done, ``held`` for a date another owner runs).
    """

    cycle_date: date
    status: str
    reason: str
    run_id: int | None = None
    attempt: int | None = None
    parent_version: int | None = None
    version: int | None = None
    decision: str | None = None
    error: str | None = None
    record: CycleRecord = field(default_factory=CycleRecord)
    report: ReportPaths | None = None
    world_size: int = 1  # ranks that trained (``--nproc``)
    ranks: tuple[RankReport, ...] = ()  # each rank's final state hash and shard, on N ranks
    period: Period | None = None  # the period run, named by its start (default: the day ``cycle_date``)

    def __post_init__(self) -> None:
        if self.period is None:
            object.__setattr__(self, "period", Period.of_day(self.cycle_date))

    @property
    def period_name(self) -> str:
        """``2024-05-01`` for a day, ``2024-05-01T13`` for an hour."""
        return self.period.name if self.period is not None else self.cycle_date.isoformat()

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"

    @property
    def verdict(self) -> GateVerdict | None:
        """The gate's verdict (None when the run did not reach the gate)."""
        return self.record.gate

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (``--json`` output, and what torchrun's rank 0 hands the launcher)."""
        return {
            "cycle_date": self.cycle_date.isoformat(),
            "status": self.status,
            "reason": self.reason,
            "run_id": self.run_id,
            "attempt": self.attempt,
            "parent_version": self.parent_version,
            "version": self.version,
            "decision": self.decision,
            "error": self.error,
            "record": self.record.to_json(),
            "report": asdict(self.report) if self.report is not None else None,
            "world_size": self.world_size,
            "ranks": [r.to_dict() for r in self.ranks],
            "period": self.period_name,
            "period_step": _step_name(self.period),
            "period_count": self.period.count if self.period is not None else 1,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CycleOutcome:
        from reloop_service.training.distributed import RankReport

        return cls(
            cycle_date=date.fromisoformat(str(d["cycle_date"])),
            status=str(d["status"]),
            reason=str(d["reason"]),
            run_id=d.get("run_id"),
            attempt=d.get("attempt"),
            parent_version=d.get("parent_version"),
            version=d.get("version"),
            decision=d.get("decision"),
            error=d.get("error"),
            record=CycleRecord.model_validate(d.get("record") or {}),
            report=ReportPaths(**d["report"]) if d.get("report") else None,
            world_size=int(d.get("world_size") or 1),
            ranks=tuple(RankReport.from_dict(r) for r in d.get("ranks") or ()),
            period=_period_from(d),
        )


def _step_name(period: Period | None) -> str:
    from reloop_service.config import format_duration

    return format_duration(period.step) if period is not None else "1d"


def _period_from(d: Mapping[str, Any]) -> Period | None:
    if not d.get("period"):
        return None
    from reloop_service.config import parse_period_step

    step = parse_period_step(str(d.get("period_step") or "1d"))
    return Period.parse(str(d["period"]), step).merged(int(d.get("period_count") or 1))


class CycleBusyError(ConflictError):
    """The date is already being run by a live owner, or already succeeded (without force)."""


def new_owner(actor: str) -> str:
    """A claim owner unique to this call: host, process, actor and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{actor}:{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------------------------- heartbeat
class Heartbeat:
    """Refreshes the claim every ``heartbeat_s``; flags ``lost`` if another owner took the date over."""

    def __init__(
        self,
        *,
        engine: Engine,
        run: CycleRun,
        interval_s: float,
        lost: threading.Event,
        paused: threading.Event | None = None,
    ) -> None:
        self.engine = engine
        self.run = run
        self.interval_s = interval_s
        self.lost = lost
        self.paused = paused or threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"cycle-heartbeat-{run.period}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self.paused.is_set():
                continue
            try:
                self.run = steps.heartbeat(engine=self.engine, run=self.run)
            except ClaimLostError as err:
                if self._stop.is_set() or self.paused.is_set():  # our own finish closed the claim
                    return
                log.error("cycle %s: %s", self.run.period, err)
                self.lost.set()
                return
            except RegistryError as err:  # database hiccup: keep trying; staleness is judged by others
                log.warning("cycle %s: heartbeat failed: %s", self.run.period, err)


# ------------------------------------------------------------------------------------- the cycle
StepHook = Callable[[str, steps.CycleContext], None]


def _permanent(exc: BaseException) -> bool:
    """Errors that another attempt cannot fix: bad or missing data, a cancelled process, a lost claim."""
    if isinstance(exc, steps.CycleCancelled | ClaimLostError):
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"IngestError", "EmptyDayError", "SpecError", "FeatureError"})


def run_cycle(
    *,
    settings: Settings,
    cycle_date: date | Period,
    force: bool = False,
    actor: str = "scheduler",
    stop: threading.Event | None = None,
    engine: Engine | None = None,
    extra: Callable[[steps.PreparedDay], Mapping[str, float]] | None = None,
    hook: StepHook | None = None,
    trainer: DayTrainer | None = None,
    clock: Clock | None = None,
) -> CycleOutcome:
    """Claim the period ``cycle_date`` and run it (see the module docstring); never raises for a step failure.

    ``cycle_date`` is a ``Period`` (a merged catch-up period runs its parts as one cycle) or, with daily
    periods, a date.

    ``stop`` cancels at the next step boundary (the run is then marked failed, its claim closed).
    ``extra`` adds figures to the run record (the demo's Bayes-optimal logloss).
    ``hook`` is called with each step's name as it starts (the CLI's progress bar).
    ``clock`` is where the readiness check reads the time and waits (``cycle.readiness``; tests inject one).
    ``trainer`` trains the candidate: in this process by default, on every rank of a torchrun job
    with ``training.distributed.DDPTrainer`` (``cycle.torchrun``).
    """
    period = Period.coerce(cycle_date, settings.period_step)
    own_engine = engine is None
    eng = engine if engine is not None else open_registry(settings)
    try:
        owner = new_owner(actor)
        started = time.perf_counter()
        claim = steps.claim(settings=settings, engine=eng, cycle_date=period, owner=owner, force=force)
        claimed = time.perf_counter()
        if not claim.acquired:
            return _skipped(claim, period)
        # Orphaned artifacts and dead attempts' work folders go before this attempt makes its own.
        from reloop_service.cycle.gc import sweep_quietly

        sweep_quietly(settings=settings, engine=eng)
        costs = {"claim": claimed - started, "sweep": time.perf_counter() - claimed}
        return execute_claimed(
            settings=settings,
            engine=eng,
            claim=claim,
            owner=owner,
            actor=actor,
            stop=stop,
            extra=extra,
            hook=hook,
            trainer=trainer,
            period=period,
            clock=clock,
            costs=costs,
        )
    finally:
        if own_engine:
            eng.dispose()


def _skipped(claim: CycleClaim, period: Period) -> CycleOutcome:
    run = claim.run
    log.info(
        "[cycle %s attempt %d] not run: %s (status %s, owner %s)",
        run.period,
        run.attempt,
        claim.reason,
        run.status,
        run.owner,
    )
    return CycleOutcome(
        cycle_date=run.cycle_date,
        status="skipped",
        reason=claim.reason,
        run_id=run.id,
        attempt=run.attempt,
        version=run.produced_version,
        error=run.error,
        period=period,
    )


def execute_claimed(
    *,
    settings: Settings,
    engine: Engine,
    claim: CycleClaim,
    owner: str,
    actor: str,
    stop: threading.Event | None = None,
    extra: Callable[[steps.PreparedDay], Mapping[str, float]] | None = None,
    hook: StepHook | None = None,
    trainer: DayTrainer | None = None,
    period: Period | None = None,
    clock: Clock | None = None,
    costs: Mapping[str, float] | None = None,
) -> CycleOutcome:
    """Run an acquired claim to its end, with retries; the claim is always closed (or lost).

    ``period`` is the claimed period (default: parsed from the run's name in ``RELOOP_CYCLE_PERIOD``).

    The final outcome is counted in the cycle metrics and, when an operator should look (failed,
    rejected, skipped), posted to ``RELOOP_ALERT_WEBHOOK_URL`` (``observe.cycle_finished``).
    """
    from reloop_service.cycle.observe import cycle_finished

    outcome = _execute_claimed(
        settings=settings,
        engine=engine,
        claim=claim,
        owner=owner,
        actor=actor,
        stop=stop,
        extra=extra,
        hook=hook,
        trainer=trainer,
        period=period or Period.parse(claim.run.period, settings.period_step),
        clock=clock,
        costs=costs,
    )
    cycle_finished(settings, outcome)
    return outcome


def _execute_claimed(
    *,
    settings: Settings,
    engine: Engine,
    claim: CycleClaim,
    owner: str,
    actor: str,
    stop: threading.Event | None,
    extra: Callable[[steps.PreparedDay], Mapping[str, float]] | None,
    hook: StepHook | None,
    trainer: DayTrainer | None,
    period: Period,
    clock: Clock | None = None,
    costs: Mapping[str, float] | None = None,
) -> CycleOutcome:
    run = claim.run
    cycle_date = period
    tries = 0
    while True:
        tries += 1
        outcome = _attempt(
            settings=settings,
            engine=engine,
            run=run,
            actor=actor,
            stop=stop,
            extra=extra,
            hook=hook,
            trainer=trainer,
            period=period,
            clock=clock,
            costs=costs,
        )
        if (
            outcome.status in ("succeeded", "skipped")
            or tries >= settings.cycle_attempts
            or outcome.reason == "permanent"
        ):
            return outcome
        wait = settings.cycle_backoff_s * (2 ** (tries - 1))
        log.warning(
            "[cycle %s attempt %d] failed (%s); retrying in %.1fs (%d/%d)",
            cycle_date,
            run.attempt,
            outcome.error,
            wait,
            tries + 1,
            settings.cycle_attempts,
        )
        if stop is not None and stop.wait(wait):
            return outcome
        if stop is None and wait > 0:
            time.sleep(wait)
        again = steps.claim(settings=settings, engine=engine, cycle_date=cycle_date, owner=owner)
        if not again.acquired:
            log.warning("[cycle %s] retry not claimed: %s", cycle_date, again.reason)
            return outcome
        run = again.run


def _attempt(
    *,
    settings: Settings,
    engine: Engine,
    run: CycleRun,
    actor: str,
    stop: threading.Event | None,
    extra: Callable[[steps.PreparedDay], Mapping[str, float]] | None,
    hook: StepHook | None,
    trainer: DayTrainer | None,
    period: Period,
    clock: Clock | None = None,
    costs: Mapping[str, float] | None = None,
) -> CycleOutcome:
    """One attempt: steps 2-7 under a heartbeat; any failure closes the run as failed."""
    clog = steps.cycle_logger("reloop_service.cycle", period, run.attempt)
    ctx = steps.CycleContext(
        settings=settings,
        engine=engine,
        cycle_date=run.cycle_date,
        run=run,
        actor=actor,
        log=clog,
        stop=stop,
        trainer=trainer or steps.local_trainer(),
        period=period,
    )
    record = CycleRecord(
        run_id=run.id,
        cycle_date=period.name,
        period=period_record(period),
        attempt=run.attempt,
        actor=actor,
        owner=run.owner,
        status="running",
        started_at=datetime.now(UTC).isoformat(),
        settings=RunSettings(
            model=settings.model,
            loss=settings.loss,
            prior_source=settings.prior_source,
            holdout_fraction=settings.holdout_fraction,
            auto_promote=settings.auto_promote,
        ),
    )
    current = "start"
    # Seconds per step (``record.costs``): the fixed costs of a cycle (claim, checkpoint load,
    # artifact write, registry transaction, report) against its training (docs/benchmarks.md).
    spent: dict[str, float] = dict(costs or {})
    mark = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        spent[name] = spent.get(name, 0.0) + now - mark
        mark = now

    def step(name: str) -> None:
        nonlocal current
        lap(STEP_COST.get(current, current))
        current = name
        ctx.check(name)
        if hook is not None:
            hook(name, ctx)

    clog.info("started by %s (run %d)", actor, run.id)
    prepared: steps.PreparedDay | None = None
    try:
        with Heartbeat(
            engine=engine, run=run, interval_s=settings.heartbeat_s, lost=ctx.claim_lost, paused=ctx.finishing
        ):
            ctx.workdir = steps.make_workdir(settings, period, run)
            step("ready")
            ready = wait_until_ready(settings, period, clock or SystemClock(stop))
            record.readiness = ReadinessSummary(
                ready=ready.ready,
                reason=ready.reason,
                checks=ready.checks,
                mode=settings.readiness,
                label_delay=settings.label_delay,
            )
            if not ready.ready:
                raise steps.DaySkipped(
                    "not_ready", f"not ready after {ready.checks} check(s): {ready.reason}"
                )
            step("parent")
            parent = steps.resolve_parent(ctx)
            record.parent_version = parent.number
            step("ingest")
            ingested = steps.ingest(ctx, parent=parent)
            step("priors")
            prepared = steps.fetch_priors(ctx, ingested=ingested, parent=parent)
            record.ingest = prepared.ingest
            record.coverage = PriorCoverage.model_validate(prepared.coverage.to_dict())
            record.collisions = prepared.collisions
            if extra is not None:
                record.extra = plain_json(extra(prepared))
            step("train")
            trained = steps.train_candidate(ctx, prepared=prepared, parent=parent)
            record.train = TrainSummary.model_validate(
                plain_json(
                    {
                        "loss": trained.loss,
                        "cold_start": trained.cold_start,
                        "seconds": trained.seconds,
                        "train_rows": prepared.train_rows,
                        "holdout_rows": prepared.holdout_rows,
                        **trained.info,
                    }
                )
            )
            step("gate")
            verdict = steps.gate(ctx, prepared=prepared, candidate=trained.checkpoint, parent=parent)
            record.gate = verdict
            if verdict.passed and settings.train_on_holdout:
                step("train_holdout")
                trained = steps.train_holdout(ctx, prepared=prepared, trained=trained)
                record.train.holdout_trained_rows = int(trained.info["holdout_trained_rows"])
                record.train.seconds = trained.seconds
            step("register")
            record.costs = _rounded(spent)
            registered = steps.register(ctx, trained=trained, verdict=verdict, parent=parent, record=record)
            spent.update(registered.seconds)
            record.costs = _rounded(spent)  # the report's copy: all but the report itself
            mark = time.perf_counter()
        record.status = "succeeded"
        record.version = registered.version.version
        record.decision = registered.decision
        record.finished_at = datetime.now(UTC).isoformat()
        clog.info("succeeded: version %d %s", registered.version.version, registered.decision)
        # Step 7 only after step 6 committed: a report never claims a version the registry lacks.
        # A report that cannot be written is logged; the run and its version stand.
        paths: list[ReportPaths] = []
        current = "report"
        if hook is not None:
            hook("report", ctx)
        try:
            paths.append(steps.report(settings=settings, record=record))
        except Exception as rep_err:
            clog.error("could not write the report of version %d: %s", registered.version.version, rep_err)
        lap("report")
        record.costs = _rounded(spent)
        clog.info("%s", describe_costs(spent, rows=trained_rows(record)))
        return CycleOutcome(
            cycle_date=run.cycle_date,
            status="succeeded",
            reason="ran",
            run_id=run.id,
            attempt=run.attempt,
            parent_version=record.parent_version,
            version=registered.version.version,
            decision=registered.decision,
            record=record,
            report=paths[0] if paths else None,
            period=period,
        )
    except steps.DaySkipped as skip:
        return _skip_run(settings, engine, run, period, record, skip, clog)
    except Exception as exc:
        error = f"step {current}: {type(exc).__name__}: {exc}"
        clog.error("failed: %s", error)
        clog.debug("traceback:\n%s", traceback.format_exc())
        record.status, record.error, record.failed_step = "failed", error, current
        record.finished_at = datetime.now(UTC).isoformat()
        return _close_run(
            settings,
            run,
            period,
            record,
            status="failed",
            reason="permanent" if _permanent(exc) else "error",
            error=error,
            close=lambda details: steps.fail_run(engine=engine, run=run, error=error, details=details),
            clog=clog,
        )
    finally:
        steps.remove_workdir(ctx.workdir)


def _skip_run(
    settings: Settings,
    engine: Engine,
    run: CycleRun,
    period: Period,
    record: CycleRecord,
    skip: steps.DaySkipped,
    clog: logging.LoggerAdapter[logging.Logger],
) -> CycleOutcome:
    """Close the run as ``skipped`` with its reason: nothing was trained, production is untouched."""
    clog.warning("skipped (%s): %s", skip.code, skip)
    record.status, record.skip_reason, record.error = "skipped", skip.code, str(skip)
    record.finished_at = datetime.now(UTC).isoformat()
    return _close_run(
        settings,
        run,
        period,
        record,
        status="skipped",
        reason=skip.code,
        error=str(skip),
        close=lambda details: steps.skip_run(
            engine=engine, run=run, code=skip.code, message=str(skip), details=details
        ),
        clog=clog,
    )


def _close_run(
    settings: Settings,
    run: CycleRun,
    period: Period,
    record: CycleRecord,
    *,
    status: str,
    reason: str,
    error: str,
    close: Callable[[CycleRecord], Any],
    clog: logging.LoggerAdapter[logging.Logger],
) -> CycleOutcome:
    """Close a run that produced no version (failed or skipped), then write its report.

    The registry row first: a report never claims what the registry does not hold. A database that
    cannot take the row leaves the claim to go stale (another process takes it over).
    """
    details = record.model_copy(update={"status": None})  # the run's row holds the status
    try:
        close(details)
    except ClaimLostError as lost:
        clog.error("could not mark the run %s: %s", status, lost)
    except RegistryError as db_err:
        clog.error("could not mark the run %s (its heartbeat will go stale): %s", status, db_err)
    report_paths = None
    try:
        report_paths = steps.report(settings=settings, record=record)
    except Exception as rep_err:
        clog.error("could not write the %s report: %s", status, rep_err)
    return CycleOutcome(
        cycle_date=run.cycle_date,
        status=status,
        reason=reason,
        run_id=run.id,
        attempt=run.attempt,
        parent_version=record.parent_version,
        error=error,
        record=record,
        report=report_paths,
        period=period,
    )


# The step names as costs: the parent step is the checkpoint load; register splits into artifact
# write and registry transaction (``steps.register`` times both).
STEP_COST = {"start": "workdir", "parent": "checkpoint_load"}
FIXED_COSTS = (
    "claim",
    "sweep",
    "workdir",
    "ready",
    "checkpoint_load",
    "artifact_write",
    "registry_tx",
    "report",
)
TRAINING_COSTS = ("train", "gate", "train_holdout")


def _rounded(spent: Mapping[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in spent.items()}


def trained_rows(record: CycleRecord) -> int:
    """Rows the candidate trained on (its day's training rows plus, once the gate passed, the holdout)."""
    train = record.train
    if train is None:
        return 0
    return int(train.train_rows or 0) + int(train.holdout_trained_rows or 0)


def describe_costs(spent: Mapping[str, float], *, rows: int) -> str:
    """One line: each fixed cost in ms, their sum, and the training time and rows/s it compares with."""
    fixed = sum(spent.get(k, 0.0) for k in FIXED_COSTS)
    training = sum(spent.get(k, 0.0) for k in TRAINING_COSTS)
    parts = ", ".join(f"{k} {1000 * spent[k]:.0f}ms" for k in FIXED_COSTS if k in spent)
    rate = f", {rows / training:,.0f} training rows/s" if training > 0 and rows else ""
    return (
        f"fixed costs {1000 * fixed:.0f}ms ({parts}); ingest+priors "
        f"{1000 * (spent.get('ingest', 0.0) + spent.get('priors', 0.0)):.0f}ms; "
        f"training {1000 * training:.0f}ms{rate}"
    )


def period_record(period: Period) -> PeriodSummary:
    """What the run record says of its period: name, bounds, step, and the parts of a merged one."""
    from reloop_service.config import format_duration

    return PeriodSummary(
        name=period.name,
        start=period.start.isoformat(),
        end=period.end.isoformat(),
        step=format_duration(period.step),
        count=period.count,
        parts=[p.name for p in period.parts()],
    )


# --------------------------------------------------------------------------------------- queries
def cycle_history(*, settings: Settings, engine: Engine | None = None) -> tuple[set[Period], Period | None]:
    """Periods that succeeded (each part of a merged one), and the latest (the scheduler's catch-up).

    Periods are in ``RELOOP_CYCLE_PERIOD``; runs of another period length (the setting changed) count
    by their start.
    """
    own = engine is None
    eng = engine if engine is not None else open_registry(settings)
    try:
        with session_scope(eng, readonly=True) as session:
            runs = cycle_runs.list_cycle_runs(
                session, model_name=settings.model_name, status=CycleStatus.SUCCEEDED, limit=100_000
            )
    finally:
        if own:
            eng.dispose()
    step = settings.period_step
    done: set[Period] = set()
    for r in runs:
        parts = (r.details.period.parts if r.details.period else None) or [r.period]
        for name in parts:
            try:
                done.add(Period.parse(str(name), step))
            except ValueError:  # a start that is not one of this step's (another period length)
                continue
    return done, max(done) if done else None


# ------------------------------------------------------------------------------------ admin hook
def make_cycle_trigger(
    settings: Settings, engine: Engine | None = None
) -> Callable[[date | Period | str, bool, str], int]:
    """The serving app's ``app.state.cycle_trigger``: claim now, run in a background thread.

    The period is a ``Period``, its name (``2024-05-01T13``) or, with daily periods, a date.

    The claim happens in the caller so the route can answer with the run id at once, or with 409
    (``CycleBusyError``) when the date is held by a live owner or already succeeded without force.
    """

    def trigger(cycle_date: date | Period | str, force: bool, actor: str) -> int:
        period = Period.coerce(cycle_date, settings.period_step)
        eng = engine if engine is not None else open_registry(settings)
        owner = new_owner(actor)
        claim = steps.claim(settings=settings, engine=eng, cycle_date=period, owner=owner, force=force)
        if not claim.acquired:
            if engine is None:
                eng.dispose()
            hint = " (use force to re-run it)" if claim.reason == "succeeded" else ""
            raise CycleBusyError(
                f"cycle {period} not started: {claim.reason} (run {claim.run.id}, "
                f"status {claim.run.status}){hint}"
            )

        def work() -> None:
            try:
                execute_claimed(
                    settings=settings, engine=eng, claim=claim, owner=owner, actor=actor, period=period
                )
            except Exception:
                log.exception("background cycle %s crashed", period)
            finally:
                if engine is None:
                    eng.dispose()

        threading.Thread(target=work, name=f"cycle-{period}", daemon=True).start()
        return claim.run.id

    return trigger
