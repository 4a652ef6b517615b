"""``reloop scheduler``: the dedicated process that runs the cycle on a clock, once per period.

APScheduler only decides *when* to try. Whether a date runs is decided by the claim in the
cycle-runs table (step 1 of the cycle): APScheduler's FAQ warns that job stores shared across
processes run jobs twice, so two schedulers (or a scheduler and the admin API) may both fire and
exactly one trains.

- Daily periods: one ``CronTrigger`` at ``schedule_time`` in ``timezone`` (``coalesce=True``,
  ``max_instances=1``, an explicit ``misfire_grace_time``), on a one-thread executor. Sub-daily periods
  (``RELOOP_CYCLE_PERIOD=1h``): an ``IntervalTrigger`` every period, ``label_delay`` after each period
  ends; the target is the last period that has ended (a period still open is never trained on; one
  whose logs are not ready yet is skipped as ``not_ready`` and tried again at the next tick).
- With ``max_catchup_periods``, a catch-up longer than that merges its oldest missing periods into
  one cycle (logged, and recorded in the run's ``period`` with its parts).
- On start and on every tick, a catch-up runs every day missing since the last success, oldest
  first, bounded by ``max_catchup_days``; days beyond the bound are logged one by one with the
  backfill command that covers them (apscheduler#296: a missed day is never skipped silently).
- SIGTERM / SIGINT stop cleanly: the running cycle is cancelled at its next step boundary and
  marked failed (its claim released), or finishes if it is already committing.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar
from zoneinfo import ZoneInfo

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from reloop_service.config import DAY, Settings, format_duration
from reloop_service.data.period import Period, last_closed, period_range

if TYPE_CHECKING:
    from reloop_service.cycle.run import CycleOutcome
    from reloop_service.cycle.torchrun import CycleRunner

log = logging.getLogger(__name__)

DAILY_JOB_ID = "reloop-daily-cycle"


def daterange(start: date, end: date) -> list[date]:
    """Every day from ``start`` to ``end`` inclusive (empty when ``end < start``)."""
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


T = TypeVar("T", date, Period)


@dataclass(frozen=True)
class CatchUpPlan:
    """Which periods a catch-up runs, oldest first, and which missing ones are beyond its bound.

    Days in, days out (the daily API); with ``Period`` values a merged catch-up period (``count`` > 1)
    may lead ``to_run``, and ``merged`` is it.
    """

    target: date | Period
    to_run: list[Any]
    beyond_bound: list[Any] = field(default_factory=list)
    merged: Period | None = None


def _as_period(value: date | Period, step: timedelta) -> Period:
    if isinstance(value, Period):
        return Period.containing(value.start, step)
    return (
        Period.of_day(value)
        if step == DAY
        else Period.containing(datetime.combine(value, datetime.min.time()), step)
    )


def plan_catch_up(
    *,
    target: date | Period,
    succeeded: set[date] | set[Period],
    last_success: date | Period | None,
    max_catchup_days: int,
    max_catchup_periods: int | None = None,
) -> CatchUpPlan:
    """Periods (days) missing since the last success up to ``target`` (the target alone without any success).

    At most ``max_catchup_days`` days of them run (the most recent ones); older ones are returned in
    ``beyond_bound`` for the caller to log, never dropped silently. With ``max_catchup_periods``, when
    more periods than that remain, the oldest consecutive ones are merged into one period so the
    catch-up runs at most that many cycles.
    """
    step = target.step if isinstance(target, Period) else DAY
    goal = _as_period(target, step)
    done = {_as_period(s, step) for s in succeeded}
    start = goal if last_success is None else min(_as_period(last_success, step).next(), goal)
    missing = [p for p in period_range(start, goal) if p not in done]
    bound = max(0, max_catchup_days) * (DAY // step)
    beyond: list[Period] = []
    if len(missing) > bound:
        cut = len(missing) - bound
        beyond, missing = missing[:cut], missing[cut:]
    merged = None
    if max_catchup_periods is not None and len(missing) > max_catchup_periods:
        want = len(missing) - max_catchup_periods + 1
        head = 1
        while head < want and missing[head].start == missing[head - 1].end:
            head += 1
        if head > 1:
            merged = missing[0].merged(head)
            missing = [merged, *missing[head:]]
    if isinstance(target, Period):
        return CatchUpPlan(target=target, to_run=missing, beyond_bound=beyond, merged=merged)
    return CatchUpPlan(
        target=target,
        to_run=[p if p.count > 1 else p.day for p in missing],
        beyond_bound=[p.day for p in beyond],
        merged=merged,
    )


def target_day(settings: Settings, now: datetime | None = None) -> date:
    """The day a tick processes: yesterday in the scheduler's time zone (today's logs are not complete)."""
    tz = ZoneInfo(settings.timezone)
    current = now.astimezone(tz) if now is not None else datetime.now(tz)
    return current.date() - timedelta(days=1)


def target_period(settings: Settings, now: datetime | None = None) -> Period:
    """The period a tick processes: yesterday (daily), else the last period that has ended (UTC)."""
    step = settings.period_step
    if step == DAY:
        return Period.of_day(target_day(settings, now))
    return last_closed(now or datetime.now(UTC), step)


def catch_up(
    *,
    settings: Settings,
    target: date | Period,
    stop: threading.Event | None = None,
    actor: str = "scheduler",
    run: CycleRunner | None = None,
) -> list[CycleOutcome]:
    """Run every missing period up to ``target`` in order (see ``plan_catch_up``); returns the outcomes."""
    from reloop_service.cycle.run import cycle_history, run_cycle

    runner: CycleRunner = run or run_cycle
    succeeded, last_success = cycle_history(settings=settings)
    goal = target if isinstance(target, Period) else Period.coerce(target, settings.period_step)
    plan = plan_catch_up(
        target=goal,
        succeeded=succeeded,
        last_success=last_success,
        max_catchup_days=settings.max_catchup_days,
        max_catchup_periods=settings.max_catchup_periods,
    )
    unit = "day" if settings.period_step == DAY else "period"
    if plan.beyond_bound:  # one line, not one per day (an old registry has hundreds)
        first, last = plan.beyond_bound[0], plan.beyond_bound[-1]
        log.warning(
            "%d missing %s(s) %s..%s are older than max_catchup_days=%d: not run automatically; "
            "run `reloop cycle backfill --from %s --to %s`",
            len(plan.beyond_bound),
            unit,
            first,
            last,
            settings.max_catchup_days,
            first,
            last,
        )
    if plan.merged is not None:
        log.warning(
            "catch-up: %d missing periods exceed max_catchup_periods=%d: the oldest %d merged into one "
            "cycle %s",
            len(plan.to_run) - 1 + plan.merged.count,
            settings.max_catchup_periods,
            plan.merged.count,
            plan.merged.describe(),
        )
    from reloop_service.cycle.observe import CYCLE_METRICS

    CYCLE_METRICS.catchup_beyond.set(len(plan.beyond_bound))
    if plan.to_run:
        log.info(
            "catch-up to %s (last success %s): %d %s(s) to run: %s",
            target,
            last_success,
            len(plan.to_run),
            "cycle" if plan.merged is not None else unit,
            ", ".join(p.describe() for p in plan.to_run),
        )
    else:
        log.info("catch-up to %s: nothing missing (last success %s)", target, last_success)
    outcomes = []
    started = time.monotonic()
    total = len(plan.to_run)
    for i, day in enumerate(plan.to_run):
        CYCLE_METRICS.set_pending(total - i)
        if stop is not None and stop.is_set():
            log.warning("stopping: cycle %s and later days left for the next start", day)
            break
        log.info(
            "catch-up: running cycle %s (%d/%d%s)", day.describe(), i + 1, total, _eta(started, i, total)
        )
        outcome = runner(settings=settings, cycle_date=day, actor=actor, stop=stop)
        log.info("catch-up: cycle %s -> %s", day, outcome.status)
        outcomes.append(outcome)
    CYCLE_METRICS.set_pending(0)
    return outcomes


def _eta(started: float, done: int, total: int) -> str:
    """``, ETA 3m20s`` from the mean time of the days done so far (empty before the first)."""
    if done == 0:
        return ""
    left = (time.monotonic() - started) / done * (total - done)
    minutes, seconds = divmod(int(left), 60)
    return f", ETA {minutes}m{seconds:02d}s"


class StatusServer:
    """``/metrics`` (Prometheus) and ``/healthz`` of the scheduler on a small threaded HTTP server.

    ``/healthz`` answers 200 while the scheduler runs and 503 once it is stopping, with the next
    tick and the last success; it never touches the database.
    """

    def __init__(self, scheduler: CycleScheduler, host: str, port: int) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from reloop_service.cycle.observe import CYCLE_METRICS

        owner = scheduler

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(CYCLE_METRICS.registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    status = owner.health()
                    code = 200 if status["status"] == "ok" else 503
                    self._send(code, json.dumps(status).encode(), "application/json")
                else:
                    body = {"type": "about:blank", "title": "Not Found", "status": 404, "detail": path[:200]}
                    self._send(404, json.dumps(body).encode(), "application/problem+json")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
                return

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="scheduler-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class CycleScheduler:
    """The daily trigger plus catch-up, on a one-thread executor so ticks never overlap."""

    def __init__(self, settings: Settings, *, run: CycleRunner | None = None) -> None:
        self.settings = settings
        self.stop_event = threading.Event()
        self.status_server: StatusServer | None = None
        from reloop_service.cycle.torchrun import runner_for

        # One process or N torchrun ranks: either way a CycleOutcome per date, and ``stop`` honoured.
        self._run = run if run is not None else runner_for(settings.nproc)
        tz = ZoneInfo(settings.timezone)
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": settings.misfire_grace_s,
            },
            timezone=tz,
        )
        step = settings.period_step
        self.trigger: CronTrigger | IntervalTrigger
        if step == DAY:
            self.trigger = CronTrigger(
                hour=settings.schedule_time.hour,
                minute=settings.schedule_time.minute,
                second=settings.schedule_time.second,
                timezone=tz,
            )
        else:
            # Every period, label_delay after it ends (the readiness check still decides).
            offset = settings.label_delay_td % step
            self.trigger = IntervalTrigger(
                seconds=int(step.total_seconds()), start_date=datetime(2000, 1, 1, tzinfo=UTC) + offset
            )

    def health(self) -> dict[str, Any]:
        """The ``/healthz`` body (from memory only)."""
        from reloop_service.cycle.observe import CYCLE_METRICS

        job = self.scheduler.get_job(DAILY_JOB_ID) if self.scheduler.running else None
        next_run = getattr(job, "next_run_time", None)
        last = CYCLE_METRICS.last_success_at
        running = self.scheduler.running and not self.stop_event.is_set()
        return {
            "status": "ok" if running else "stopping",
            "next_run": next_run.isoformat() if next_run else None,
            "last_success": datetime.fromtimestamp(last).astimezone().isoformat() if last else None,
            "catchup_pending_days": CYCLE_METRICS.pending_days,
        }

    def _update_next_run(self) -> None:
        from reloop_service.cycle.observe import CYCLE_METRICS

        job = self.scheduler.get_job(DAILY_JOB_ID) if self.scheduler.running else None
        next_run = getattr(job, "next_run_time", None)
        if next_run is not None:
            CYCLE_METRICS.next_run.set(next_run.timestamp())

    def tick(self) -> None:
        """One scheduled run: catch up to yesterday (errors are logged; the next tick retries)."""
        from reloop_service.cycle.observe import CYCLE_METRICS

        CYCLE_METRICS.ticks.inc()
        self._update_next_run()
        try:
            catch_up(
                settings=self.settings,
                target=target_period(self.settings),
                stop=self.stop_event,
                run=self._run,
            )
        except Exception:
            log.exception("scheduled catch-up failed; the next tick tries again")

    def start(self) -> None:
        """Schedule the daily job and an immediate catch-up, and start the background thread."""
        self.scheduler.add_job(
            self.tick,
            self.trigger,
            id=DAILY_JOB_ID,
            name="cycle",
            replace_existing=True,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=self.settings.misfire_grace_s,
        )
        # The start-up catch-up shares the one-thread executor, so it never overlaps a tick.
        self.scheduler.add_job(self.tick, id="reloop-startup-catch-up", name="start-up catch-up")
        self._seed_metrics()
        self.scheduler.start()
        self._update_next_run()
        self._start_status_server()
        job = self.scheduler.get_job(DAILY_JOB_ID)
        log.info(
            "scheduler started: %s (next %s), misfire grace %ds, max catch-up %d days",
            f"daily at {self.settings.schedule_time} {self.settings.timezone}"
            if self.settings.period_step == DAY
            else f"every {format_duration(self.settings.period_step)}, {self.settings.label_delay} after "
            "each period ends",
            getattr(job, "next_run_time", None),
            self.settings.misfire_grace_s,
            self.settings.max_catchup_days,
        )

    def _seed_metrics(self) -> None:
        """Last-success figures from the registry, so a restarted scheduler reports them at once."""
        from reloop_service.cycle.observe import CYCLE_METRICS
        from reloop_service.registry import cycle_runs
        from reloop_service.registry.db import session_scope
        from reloop_service.registry.service import open_registry

        CYCLE_METRICS.scheduler_up.set(1)
        try:
            engine = open_registry(self.settings)
            try:
                with session_scope(engine, readonly=True) as session:
                    runs = cycle_runs.list_cycle_runs(
                        session, model_name=self.settings.model_name, limit=1000
                    )
            finally:
                engine.dispose()
            CYCLE_METRICS.seed(runs)
        except Exception as exc:  # metrics are no reason to stop the clock
            log.warning("cycle metrics not seeded from the registry: %s", exc)

    def _start_status_server(self) -> None:
        port = self.settings.scheduler_port
        if not port:
            return
        try:
            self.status_server = StatusServer(self, self.settings.scheduler_host, port)
        except OSError as exc:
            log.error(
                "scheduler /metrics and /healthz not served: %s:%d: %s (set RELOOP_SCHEDULER_PORT)",
                self.settings.scheduler_host,
                port,
                exc,
            )
            return
        self.status_server.start()
        log.info(
            "scheduler metrics at http://%s:%d/metrics, health at /healthz",
            self.settings.scheduler_host,
            self.status_server.port,
        )

    def stop(self) -> None:
        """Cancel the running cycle at its next step boundary and wait for it to record its end."""
        from reloop_service.cycle.observe import CYCLE_METRICS

        self.stop_event.set()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        if self.status_server is not None:
            self.status_server.stop()
            self.status_server = None
        CYCLE_METRICS.scheduler_up.set(0)
        log.info("scheduler stopped")

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT, then stop cleanly."""

        def _on_signal(signum: int, _frame: Any) -> None:
            log.info("received %s: stopping after the running step", signal.Signals(signum).name)
            self.stop_event.set()

        previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not self.stop_event.wait(1.0):
                pass
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
