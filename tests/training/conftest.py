"""Fixtures of the training tests: single-threaded torch (the machine is shared), small specs."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """Some code under test sets the thread count; keep every test on one thread."""
    torch.set_num_threads(1)


# --- generated click logs with signal -----------------------------------------------------------------
import datetime as _dt  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from reloop_service.data.spec import (  # noqa: E402
    CategoricalField,
    FeatureSpec,
    MultiCategoricalField,
    NumericField,
)

N_USERS, N_ITEMS = 300, 120


def small_spec() -> FeatureSpec:
    """A spec shaped like the demo's, small enough for fast tests (unfitted numeric stats)."""
    return FeatureSpec(
        label="label",
        impression_id="impression_id",
        event_time="event_time",
        categorical=(
            CategoricalField("user_id", 1024),
            CategoricalField("item_id", 512),
            CategoricalField("device", 8),
        ),
        numeric=(NumericField("price"),),
        multi=(MultiCategoricalField("interests", 64, 3),),
    )


def true_ctr(users: np.ndarray, items: np.ndarray, price: np.ndarray) -> np.ndarray:
    """Hidden ground truth: fixed per-user and per-item effects plus a price effect."""
    world = np.random.default_rng(12345)
    user_effect = world.normal(0.0, 1.0, N_USERS)
    item_effect = world.normal(0.0, 1.2, N_ITEMS)
    z = -1.5 + user_effect[users] + item_effect[items] - 0.4 * np.log1p(price)
    return 1.0 / (1.0 + np.exp(-z))


def make_day(day: _dt.date, rows: int, seed: int, *, prior: np.ndarray | None = None) -> pa.Table:
    """One day of click logs whose labels follow ``true_ctr``."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, N_USERS, rows)
    items = rng.integers(0, N_ITEMS, rows)
    price = rng.lognormal(2.0, 1.0, rows)
    labels = (rng.random(rows) < true_ctr(users, items, price)).astype(np.int64)
    start = _dt.datetime.combine(day, _dt.time(), tzinfo=_dt.UTC)
    seconds = np.sort(rng.integers(0, 86400, rows))
    columns = {
        "impression_id": pa.array([f"{day.isoformat()}-{i}" for i in range(rows)]),
        "event_time": pa.array(
            [start + _dt.timedelta(seconds=int(s)) for s in seconds], pa.timestamp("us", "UTC")
        ),
        "label": pa.array(labels),
        "user_id": pa.array([f"u{u}" for u in users]),
        "item_id": pa.array([f"i{i}" for i in items]),
        "device": pa.array(rng.choice(["ios", "android", "web"], rows).tolist()),
        "price": pa.array(price),
        "interests": pa.array(
            [[f"t{t}" for t in rng.integers(0, 20, rng.integers(0, 4))] for _ in range(rows)],
            pa.list_(pa.string()),
        ),
    }
    if prior is not None:
        columns["prior_ctr"] = pa.array(prior, pa.float64(), from_pandas=True)
    return pa.table(columns)


def write_day(root: Path, table: pa.Table, day: _dt.date) -> Path:
    """Write ``table`` as ``<root>/dt=YYYY-MM-DD/part-0.parquet`` (the click-log layout)."""
    folder = root / f"dt={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "part-0.parquet"
    pq.write_table(table, path, row_group_size=1000)
    return path


def parquet_batches(path: Path, batch_size: int = 1500):
    """A re-iterable stream of record batches read from a Parquet file."""
    return lambda: pq.ParquetFile(path).iter_batches(batch_size=batch_size)
