"""``Period``: one cycle's slice of time (a day, an hour, or any divisor of a day), named by its start.

A cycle used to be a calendar day; with ``RELOOP_CYCLE_PERIOD=1h`` it is an hour. Everything that
names a cycle (claims, runs, reports, the registry's lineage, the CLI and the API) uses the period's
start: ``2024-05-01`` for a daily period, ``2024-05-01T13`` for an hourly one, ``2024-05-01T13:30`` for
a period shorter than an hour. Periods are UTC. A catch-up may merge ``count`` consecutive periods
into one cycle: it keeps the first period's name, and ``parts()`` lists what it covers.

Click-log partitions (``partitions()``): ``dt=YYYY-MM-DD`` for daily periods, ``dt=YYYY-MM-DD/hr=HH``
for each hour of an hourly (or multi-hour) period, ``dt=YYYY-MM-DD/hr=HH/mi=MM`` below an hour.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from reloop_service.config import DAY, format_duration, parse_period_step

HOUR = timedelta(hours=1)
_NAME = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:[T ](\d{2})(?::(\d{2}))?)?$")

__all__ = ["DAY", "HOUR", "Period", "PeriodError", "format_duration", "parse_period_step"]


class PeriodError(ValueError):
    """A period name or step that cannot be used (the message says what is expected)."""


@dataclass(frozen=True, order=True)
class Period:
    """``count`` consecutive periods of length ``step`` from ``start`` (aware UTC, aligned to ``step``).

    Identity and order are the start alone (the registry's key is the start's name), so a merged
    catch-up period equals its first period.
    """

    start: datetime
    step: timedelta = field(default=DAY, compare=False)
    count: int = field(default=1, compare=False)

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            object.__setattr__(self, "start", self.start.replace(tzinfo=UTC))
        elif self.start.utcoffset() != timedelta(0):
            object.__setattr__(self, "start", self.start.astimezone(UTC))
        if self.count < 1:
            raise PeriodError(f"a period covers at least one step (count={self.count})")
        if DAY % self.step:
            raise PeriodError(f"period {format_duration(self.step)} does not divide a day")
        offset = self.start - self.start.replace(hour=0, minute=0, second=0, microsecond=0)
        if offset % self.step:
            raise PeriodError(
                f"{self.start.isoformat()} is not the start of a {format_duration(self.step)} period"
            )

    # --------------------------------------------------------------------------- construction
    @classmethod
    def of_day(cls, day: date) -> Period:
        """The daily period of ``day``."""
        return cls(datetime(day.year, day.month, day.day, tzinfo=UTC), DAY)

    @classmethod
    def containing(cls, moment: datetime, step: timedelta) -> Period:
        """The period of length ``step`` that ``moment`` falls in (naive = UTC)."""
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return cls(midnight + ((moment - midnight) // step) * step, step)

    @classmethod
    def parse(cls, text: str, step: timedelta = DAY) -> Period:
        """``2024-05-01`` (the day's first period), ``2024-05-01T13`` or ``2024-05-01T13:30``."""
        match = _NAME.match(text.strip())
        if match is None:
            raise PeriodError(
                f"{text!r} is not a period start (expected YYYY-MM-DD, YYYY-MM-DDTHH or YYYY-MM-DDTHH:MM)"
            )
        day_s, hour_s, minute_s = match.groups()
        try:
            start = datetime.fromisoformat(day_s).replace(
                hour=int(hour_s or 0), minute=int(minute_s or 0), tzinfo=UTC
            )
        except ValueError as exc:
            raise PeriodError(f"{text!r} is not a period start: {exc}") from None
        return cls(start, step)

    @classmethod
    def coerce(cls, value: date | datetime | Period | str, step: timedelta = DAY) -> Period:
        """A ``Period`` from what callers pass: a period, a name, a datetime or (daily only) a date."""
        if isinstance(value, Period):
            return value
        if isinstance(value, str):
            return cls.parse(value, step)
        if isinstance(value, datetime):
            return cls(value, step)
        if step != DAY:
            raise PeriodError(
                f"{value.isoformat()} names a day but the cycle period is {format_duration(step)}: "
                f"name a period start, e.g. {value.isoformat()}T00"
            )
        return cls.of_day(value)

    # ------------------------------------------------------------------------------- naming
    @property
    def name(self) -> str:
        """The start, as precise as the step needs: ``2024-05-01``, ``2024-05-01T13``, ``…T13:30``."""
        return period_name(self.start, self.step)

    def isoformat(self) -> str:
        return self.name

    def __str__(self) -> str:
        return self.name

    def describe(self) -> str:
        """The name, or for a merged period ``first..last (N periods)``."""
        if self.count == 1:
            return self.name
        return f"{self.name}..{self.parts()[-1].name} ({self.count} periods)"

    # ------------------------------------------------------------------------------- extent
    @property
    def day(self) -> date:
        """The calendar day (UTC) the period starts on."""
        return self.start.date()

    @property
    def length(self) -> timedelta:
        return self.step * self.count

    @property
    def end(self) -> datetime:
        """The first instant after the period."""
        return self.start + self.length

    @property
    def is_daily(self) -> bool:
        return self.step == DAY

    def parts(self) -> tuple[Period, ...]:
        """The single periods a merged period covers (itself when ``count`` is 1)."""
        return tuple(Period(self.start + i * self.step, self.step) for i in range(self.count))

    def next(self) -> Period:
        """The single period right after this one."""
        return Period(self.end, self.step)

    def merged(self, count: int) -> Period:
        """This period and the ``count - 1`` after it, as one."""
        return Period(self.start, self.step, count)

    def partitions(self) -> tuple[str, ...]:
        """Click-log folders (relative to the log root) holding this period's rows, in time order."""
        out: list[str] = []
        for part in self.parts():
            if part.step == DAY:
                out.append(f"dt={part.day.isoformat()}")
            elif part.step % HOUR == timedelta(0):
                for h in range(part.step // HOUR):
                    t = part.start + h * HOUR
                    out.append(f"dt={t.date().isoformat()}/hr={t.hour:02d}")
            else:
                t = part.start
                out.append(f"dt={t.date().isoformat()}/hr={t.hour:02d}/mi={t.minute:02d}")
        return tuple(out)


def period_name(start: datetime, step: timedelta) -> str:
    """The name of the period of length ``step`` starting at ``start``."""
    if step % DAY == timedelta(0):
        return start.date().isoformat()
    if step % HOUR == timedelta(0):
        return start.strftime("%Y-%m-%dT%H")
    return start.strftime("%Y-%m-%dT%H:%M")


def period_range(first: Period, last: Period) -> list[Period]:
    """Every single period from ``first`` to ``last`` inclusive, in ``first``'s step (empty if reversed)."""
    return list(iter_periods(first, last))


def iter_periods(first: Period, last: Period) -> Iterator[Period]:
    step = first.step
    current = Period(first.start, step)
    while current.start <= last.start:
        yield current
        current = current.next()


def last_closed(now: datetime, step: timedelta) -> Period:
    """The latest period that has ended at ``now`` (the one before the period ``now`` is in)."""
    current = Period.containing(now, step)
    return Period(current.start - step, step)
