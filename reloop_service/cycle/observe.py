"""What operators see of finished cycles: Prometheus figures and the alert webhook.

``cycle_finished`` is called once per cycle that this process ran (any trigger: scheduler, CLI,
backfill, admin API), after its run record is closed. The figures live on one registry per
process (``CYCLE_METRICS``) that the scheduler serves at ``/metrics``; they are seeded from the
registry's cycle-runs table at scheduler start, so a restart does not forget the last success.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from reloop_service.config import Settings

if TYPE_CHECKING:
    from reloop_service.cycle.run import CycleOutcome

log = logging.getLogger(__name__)


class CycleMetrics:
    """Cycle and scheduler figures of one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.runs = Counter(
            "reloop_cycle_runs", "Cycles run by this process, by outcome.", ["status"], registry=r
        )
        self.gate = Counter(
            "reloop_cycle_gate_outcomes",
            "Gate decisions of the cycles run here (promoted, rejected, registered).",
            ["decision"],
            registry=r,
        )
        self.last_success = Gauge(
            "reloop_cycle_last_success_timestamp_seconds",
            "When the last successful cycle finished (Unix time; 0: none yet).",
            registry=r,
        )
        self.last_success_date = Gauge(
            "reloop_cycle_last_success_date_timestamp_seconds",
            "The cycle date (00:00 UTC) of the last successful cycle.",
            registry=r,
        )
        self.last_finished = Gauge(
            "reloop_cycle_last_finished_timestamp_seconds",
            "When the last cycle ended, any outcome.",
            registry=r,
        )
        self.last_status = Gauge(
            "reloop_cycle_last_status",
            "1 for the outcome of the last cycle, 0 for the others.",
            ["status"],
            registry=r,
        )
        self.duration = Gauge(
            "reloop_cycle_last_duration_seconds", "Wall time of the last cycle.", registry=r
        )
        self.gate_passed = Gauge(
            "reloop_cycle_last_gate_passed", "1 if the last gated candidate passed, 0 if not.", registry=r
        )
        self.rows = Gauge(
            "reloop_cycle_last_rows", "Rows of the last cycle.", ["kind"], registry=r
        )  # read, valid, train, holdout
        self.coverage = Gauge(
            "reloop_cycle_last_prior_coverage_ratio",
            "Share of the last cycle's training rows by prior source.",
            ["source"],
            registry=r,
        )  # archived, recomputed, missing
        # scheduler
        self.scheduler_up = Gauge("reloop_scheduler_up", "1 while the scheduler runs.", registry=r)
        self.next_run = Gauge(
            "reloop_scheduler_next_run_timestamp_seconds", "Next scheduled tick (Unix time).", registry=r
        )
        self.catchup_pending = Gauge(
            "reloop_scheduler_catchup_pending_days", "Days the running catch-up has still to run.", registry=r
        )
        self.catchup_beyond = Gauge(
            "reloop_scheduler_catchup_beyond_bound_days",
            "Missing days older than max_catchup_days (need a backfill).",
            registry=r,
        )
        self.ticks = Counter("reloop_scheduler_ticks", "Catch-up ticks started.", registry=r)
        # plain copies for the scheduler's /healthz (the gauges above are write-only by design)
        self.last_success_at: float = 0.0
        self.pending_days = 0

    def set_last_success(self, when: float, day: Any) -> None:
        self.last_success_at = when
        self.last_success.set(when)
        self.last_success_date.set(_day_ts(day))

    def set_pending(self, days: int) -> None:
        self.pending_days = days
        self.catchup_pending.set(days)

    def seed(self, runs: list[Any]) -> None:
        """Set the last-success figures from the registry's runs (newest first)."""
        for run in runs:
            if getattr(run.status, "value", run.status) == "succeeded" and run.finished_at is not None:
                self.set_last_success(run.finished_at.timestamp(), run.cycle_date)
                return

    def observe(self, outcome: CycleOutcome) -> None:
        status = str(outcome.status)
        record = outcome.record
        self.runs.labels(status).inc()
        for s in ("succeeded", "failed", "skipped"):
            self.last_status.labels(s).set(1 if s == status else 0)
        now = datetime.now().astimezone()
        self.last_finished.set(now.timestamp())
        started = record.started_at
        if started:
            with contextlib.suppress(ValueError):
                self.duration.set(max(0.0, now.timestamp() - datetime.fromisoformat(started).timestamp()))
        if status == "succeeded":
            self.set_last_success(now.timestamp(), outcome.cycle_date)
            if outcome.decision:
                self.gate.labels(str(outcome.decision)).inc()
        if record.gate is not None:
            self.gate_passed.set(1 if record.gate.passed else 0)
        ingest, train = record.ingest, record.train
        for kind, value in (
            ("read", ingest.rows_read if ingest else None),
            ("valid", ingest.rows_valid if ingest else None),
            ("train", train.train_rows if train else None),
            ("holdout", train.holdout_rows if train else None),
        ):
            if isinstance(value, int | float):
                self.rows.labels(kind).set(value)
        coverage = record.coverage
        if coverage is not None and coverage.rows:
            for source, n in (
                ("archived", coverage.archived),
                ("recomputed", coverage.recomputed),
                ("missing", coverage.missing),
            ):
                self.coverage.labels(source).set(float(n) / float(coverage.rows))


def _day_ts(day: Any) -> float:
    from datetime import UTC, time

    return datetime.combine(day, time(0), tzinfo=UTC).timestamp()


CYCLE_METRICS = CycleMetrics()


def cycle_finished(settings: Settings, outcome: CycleOutcome) -> None:
    """Count the outcome and alert the operator when it needs a look; never raises."""
    try:
        CYCLE_METRICS.observe(outcome)
    except Exception:
        log.exception("cycle metrics not updated")
    try:
        from reloop_service.alerts import cycle_alert, send_alert

        event = cycle_alert(settings.model_name, outcome)
        if event is not None:
            send_alert(settings, event)
    except Exception:
        log.exception("cycle alert not sent")
