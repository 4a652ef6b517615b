"""Where a replay's bins come from: MovieLens 100K, the simulator, or any click logs in the project layout."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from reloop_service.config import format_duration
from reloop_service.data.spec import FeatureSpec
from reloop_service.replay.movielens import movielens_spec, movielens_table
from reloop_service.replay.runner import BASE_DATE, ReplayData, ReplayError, dates_from, periods_from


def movielens_data(data_dir: Path) -> ReplayData:
    """ml100k-weekly: weekly bins of MovieLens 100K (``docs/replay.md``), mapped onto consecutive dates."""
    table = movielens_table(data_dir)
    n_bins = int(np.max(table.column("bin").to_numpy())) + 1
    return ReplayData(name="ml100k-weekly", table=table, spec=movielens_spec(), dates=dates_from(n_bins))


def synthetic_data(
    *, bins: int = 31, impressions: int = 3000, data_seed: int = 0, period: str = "1d"
) -> ReplayData:
    """The simulator's days as bins (the true CTR kept per row for the Bayes-optimal logloss).

    With a sub-daily ``period`` (``1h``) each bin is one period of the simulated days, its rows those
    whose event time falls in it: ``bins`` hours of ``impressions`` a day.
    """
    from reloop_service.config import parse_period_step
    from reloop_service.data.simulator import ClickSimulator, SimulatorConfig

    sim = ClickSimulator(data_seed, start=BASE_DATE, config=SimulatorConfig(impressions_per_day=impressions))
    step = parse_period_step(period)
    if step < timedelta(days=1):
        return _sub_daily(sim, bins=bins, step=step)
    tables = []
    for k, day in enumerate(dates_from(bins)):
        table, ctr = sim.simulate_day(day)
        tables.append(
            table.append_column("bin", pa.array(np.full(table.num_rows, k, dtype=np.int64))).append_column(
                "true_ctr", pa.array(np.asarray(ctr, dtype=np.float64))
            )
        )
    return ReplayData(name="synthetic", table=pa.concat_tables(tables), spec=sim.spec, dates=dates_from(bins))


def _sub_daily(sim: Any, *, bins: int, step: timedelta) -> ReplayData:
    """``bins`` consecutive periods of the simulator's days, one bin each (see ``synthetic_data``)."""
    from reloop_service.data.ingest import parse_event_time

    periods = periods_from(bins, step)
    per_day = timedelta(days=1) // step
    tables = []
    for d in range(-(-bins // per_day)):
        day = BASE_DATE + timedelta(days=d)
        table, ctr = sim.simulate_day(day)
        micros = parse_event_time(table.column("event_time")).cast(pa.int64()).to_numpy(zero_copy_only=False)
        start_us = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1_000_000)
        k = d * per_day + (micros - start_us) // int(step.total_seconds() * 1_000_000)
        table = table.append_column("bin", pa.array(k.astype(np.int64)))
        table = table.append_column("true_ctr", pa.array(np.asarray(ctr, dtype=np.float64)))
        tables.append(table.filter(pa.array(k < bins)))
    return ReplayData(
        name=f"synthetic-{format_duration(step)}",
        table=pa.concat_tables(tables),
        spec=sim.spec,
        dates=periods,
    )


def parquet_data(*, logs_uri: str, spec: FeatureSpec, start: date, end: date) -> ReplayData:
    """Days ``start..end`` of click logs (one bin per day), validated by the same ingest as the cycle.

    Bad rows are counted and skipped here (``quarantine=False``: the user's log folder is not written);
    each run's cycle sees exactly the valid rows.
    """
    from reloop_service.data.ingest import EmptyDayError, open_days, output_schema

    if end < start:
        raise ReplayError(f"--end {end} is before --start {start}")
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    tables = []
    missing = []
    for k, day in enumerate(days):
        try:
            log = open_days(logs_uri, [day], spec, quarantine=False)
        except EmptyDayError:
            # A day without logs is a bin without rows: its cycle is skipped, the replay goes on.
            missing.append(day)
            t = output_schema(spec).empty_table()
        else:
            t = pa.Table.from_batches(list(log.iter_batches()), schema=log.schema)
        tables.append(t.append_column("bin", pa.array(np.full(t.num_rows, k, dtype=np.int64))))
    if len(missing) == len(days):
        raise ReplayError(f"{logs_uri}: no click logs for any day {start}..{end}")
    return ReplayData(
        name=f"parquet:{logs_uri}",
        table=pa.concat_tables(tables, promote_options="permissive"),
        spec=spec,
        dates=tuple(days),
    )
