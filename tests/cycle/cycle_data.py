"""Generated click logs with signal and small settings for the cycle tests (real Parquet files)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reloop_service.config import Settings

SPEC_TOML = """
version = 1
label = "label"
impression_id = "impression_id"
event_time = "event_time"

[[categorical]]
name = "user_id"
buckets = 97

[[categorical]]
name = "item_id"
buckets = 61

[[categorical]]
name = "device"
buckets = 7

[[numeric]]
name = "price"
"""

N_USERS = 60
N_ITEMS = 40
DAY0 = date(2024, 3, 1)


def day_rows(day: date, n: int, *, seed: int = 0) -> dict[str, Any]:
    """One day of impressions with a learnable CTR (user and item effects), as columns."""
    world = np.random.default_rng(seed)
    user_bias = world.normal(0.0, 1.0, N_USERS)
    item_bias = world.normal(0.0, 1.0, N_ITEMS)
    rng = np.random.default_rng([seed, day.toordinal()])
    users = rng.integers(0, N_USERS, n)
    items = rng.integers(0, N_ITEMS, n)
    device = rng.integers(0, 3, n)
    price = rng.lognormal(2.0, 0.5, n)
    logit = -1.5 + 1.2 * user_bias[users] + 1.2 * item_bias[items] + 0.3 * (device == 1)
    ctr = 1.0 / (1.0 + np.exp(-logit))
    labels = (rng.random(n) < ctr).astype(np.int64)
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    seconds = np.sort(rng.integers(0, 86_400, n))
    return {
        "impression_id": [f"{day.isoformat()}-{i:06d}" for i in range(n)],
        "label": labels,
        "event_time": [start + timedelta(seconds=int(s)) for s in seconds],
        "user_id": [f"u{u}" for u in users],
        "item_id": [f"i{i}" for i in items],
        "device": [["ios", "android", "web"][d] for d in device],
        "price": price,
    }


def write_day(logs_root: Path, day: date, n: int, *, seed: int = 0) -> pa.Table:
    """Write the day's click log as Parquet and return it."""
    cols = day_rows(day, n, seed=seed)
    table = pa.table(
        {
            "impression_id": pa.array(cols["impression_id"], pa.string()),
            "label": pa.array(cols["label"], pa.int64()),
            "event_time": pa.array(cols["event_time"], pa.timestamp("us", tz="UTC")),
            "user_id": pa.array(cols["user_id"], pa.string()),
            "item_id": pa.array(cols["item_id"], pa.string()),
            "device": pa.array(cols["device"], pa.string()),
            "price": pa.array(cols["price"], pa.float64()),
        }
    )
    folder = logs_root / f"dt={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "part-0.parquet")
    return table


def make_settings(tmp: Path, db_url: str, **overrides: Any) -> Settings:
    spec = tmp / "spec.toml"
    if not spec.exists():
        spec.write_text(SPEC_TOML)
    values: dict[str, Any] = {
        "data_dir": tmp / "data",
        "database_url": db_url,
        "spec_path": spec,
        "embedding_dim": 8,
        "mlp_hidden": (32, 16),
        "batch_size": 256,
        "learning_rate": 3e-3,
        "threads": 1,
        "cycle_attempts": 1,
        "cycle_backoff_s": 0.0,
        "heartbeat_s": 0.2,
        "stale_after_s": 30.0,
        # Generous rules: these tests are about the loop, the gate tests set their own.
        "gate_max_auc_drop": 0.2,
        "gate_max_logloss_rise": 0.2,
    }
    values.update(overrides)
    return Settings(**values)
