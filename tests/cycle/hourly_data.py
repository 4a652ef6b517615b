"""Hourly click logs for the sub-daily cycle tests: ``dt=YYYY-MM-DD/hr=HH`` partitions, real Parquet."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reloop_service.data.period import Period

from .cycle_data import day_rows


def write_hour(logs_root: Path, period: Period, n: int, *, seed: int = 0, marker: bool = True) -> Path:
    """Write one hour's click log (event times inside the hour) and, with ``marker``, its ``_SUCCESS``."""
    cols = day_rows(period.day, max(n, 1), seed=seed * 100 + period.start.hour)
    rng = np.random.default_rng([seed, period.start.hour])
    seconds = np.sort(rng.integers(0, int(period.length.total_seconds()), max(n, 1)))
    table = pa.table(
        {
            "impression_id": pa.array([f"{period.name}-{i:06d}" for i in range(n)], pa.string()),
            "label": pa.array(cols["label"][:n], pa.int64()),
            "event_time": pa.array(
                [period.start + timedelta(seconds=int(s)) for s in seconds[:n]], pa.timestamp("us", tz="UTC")
            ),
            "user_id": pa.array(cols["user_id"][:n], pa.string()),
            "item_id": pa.array(cols["item_id"][:n], pa.string()),
            "device": pa.array(cols["device"][:n], pa.string()),
            "price": pa.array(cols["price"][:n], pa.float64()),
        }
    )
    folder = logs_root / period.partitions()[0]
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "part-0.parquet")
    if marker:
        mark(logs_root, period)
    return folder


def mark(logs_root: Path, period: Period) -> None:
    """Write the period's completion marker (``_SUCCESS``, as Spark and Hive do)."""
    for part in period.partitions():
        (logs_root / part).mkdir(parents=True, exist_ok=True)
        (logs_root / part / "_SUCCESS").write_bytes(b"")


class FakeClock:
    """A clock that moves only when the code under test waits: ``sleep`` advances ``now`` at once.

    ``on_sleep`` runs at each wait (a late partition arriving while the cycle backs off).
    """

    def __init__(self, now: datetime, on_sleep: Callable[[float], None] | None = None) -> None:
        self.current = now
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep

    def now(self) -> datetime:
        return self.current

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.current += timedelta(seconds=seconds)
        if self.on_sleep is not None:
            self.on_sleep(seconds)
