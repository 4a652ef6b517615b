"""Is a period's click log complete? The check the cycle makes before it reads a period.

Clicks arrive after their impressions: a cycle that runs the moment a period ends learns a CTR biased
low. A period is ready (``RELOOP_READINESS``) when

- ``marker``: every partition of the period holds a ``_SUCCESS`` file (as Spark and Hive write it);
- ``delay``: ``RELOOP_LABEL_DELAY`` has passed since the period ended;
- ``either``: whichever of the two comes first;

and, in every mode, never while the period is still open (its end is in the future). A period that is
not ready is checked again with exponential backoff (``RELOOP_READINESS_ATTEMPTS``,
``RELOOP_READINESS_BACKOFF_S``, tenacity, on an injectable ``Clock`` so tests never sleep); still not
ready, the cycle ends as ``skipped`` with code ``not_ready`` and the reason, and a later tick or
backfill claims the period again. A period still open is not retried: it is answered at once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from reloop_service.config import Settings, format_duration
from reloop_service.data.period import Period
from reloop_service.storage import filesystem, join

MARKER = "_SUCCESS"


class Clock(Protocol):
    """Where the cycle reads the time and waits: the system's, or a test's."""

    def now(self) -> datetime: ...

    def sleep(self, seconds: float) -> None: ...


@dataclass
class SystemClock:
    """The wall clock; ``sleep`` ends early when ``stop`` is set (SIGTERM)."""

    stop: threading.Event | None = None

    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        if self.stop is not None:
            self.stop.wait(seconds)
        elif seconds > 0:
            time.sleep(seconds)


@dataclass(frozen=True)
class Readiness:
    """The answer for one period, with the reason either way (stored in the run record)."""

    ready: bool
    reason: str
    checks: int = 1
    still_open: bool = False  # the period has not ended: waiting a few backoffs cannot help


def missing_markers(settings: Settings, period: Period) -> list[str]:
    """The period's partitions without a ``_SUCCESS`` marker (relative names)."""
    fs, root = filesystem(settings.resolved_logs_uri, settings.storage_options())
    return [part for part in period.partitions() if not fs.exists(join(root, part, MARKER))]


def check_ready(settings: Settings, period: Period, now: datetime) -> Readiness:
    """One readiness check of ``period`` at ``now`` (see the module docstring)."""
    if now < period.end:
        ends = period.end.isoformat()
        return Readiness(False, f"period {period.describe()} is still open (it ends {ends})", still_open=True)
    mode = settings.readiness
    delay = settings.label_delay_td
    delay_passed = now >= period.end + delay
    delay_text = (
        f"label delay {format_duration(delay)} passed at {(period.end + delay).isoformat()}"
        if delay_passed
        else f"label delay {format_duration(delay)} not passed (until {(period.end + delay).isoformat()})"
    )
    if mode == "delay":
        return Readiness(delay_passed, delay_text)
    missing = missing_markers(settings, period)
    marker_text = (
        f"{MARKER} in all {len(period.partitions())} partition(s)"
        if not missing
        else f"no {MARKER} in {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}"
    )
    if mode == "marker":
        return Readiness(not missing, marker_text)
    return Readiness(delay_passed or not missing, f"{marker_text}; {delay_text}")


def wait_until_ready(settings: Settings, period: Period, clock: Clock) -> Readiness:
    """Check, and while not ready check again with backoff, at most ``readiness_attempts`` times."""
    import tenacity

    checks = 0

    def once() -> Readiness:
        nonlocal checks
        checks += 1
        return check_ready(settings, period, clock.now())

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(settings.readiness_attempts),
        wait=tenacity.wait_exponential(
            multiplier=settings.readiness_backoff_s, min=settings.readiness_backoff_s
        ),
        # A period that has not ended is answered at once (the scheduler only asks once it has).
        retry=tenacity.retry_if_result(lambda r: not r.ready and not r.still_open),
        sleep=clock.sleep,
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
    )
    result: Readiness = retrying(once)
    return Readiness(result.ready, result.reason, checks, result.still_open)
