"""The collision report: how many distinct values of a hashed field share a bucket."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from reloop_service.data.collisions import CollisionCounter
from reloop_service.data.spec import CategoricalField, FeatureSpec, MultiCategoricalField
from reloop_service.data.transforms import bucketize, stable_hash


def _spec(user_buckets: int) -> FeatureSpec:
    return FeatureSpec(
        label="label",
        impression_id="impression_id",
        event_time="event_time",
        categorical=(CategoricalField("user_id", user_buckets), CategoricalField("device", 1024)),
        multi=(MultiCategoricalField("tags", 4096, 3),),
    )


def _batch(users: list[str]) -> pa.Table:
    n = len(users)
    return pa.table(
        {
            "user_id": users,
            "device": ["ios", "web"] * (n // 2) + ["ios"] * (n % 2),
            "tags": [["a", "b"]] * n,
        }
    )


def test_an_undersized_field_is_flagged_with_exact_counts() -> None:
    users = [f"u{i}" for i in range(2000)]
    counter = CollisionCounter(_spec(1024), warn_fraction=0.05)
    for part in range(0, 2000, 500):  # across batches, values counted once
        counter.add(_batch(users[part : part + 500]))
    counter.add(_batch(users[:100]))
    report = {r.field: r for r in counter.report()}
    rows = bucketize(stable_hash(pa.array(users)), np.ones(2000, dtype=bool), 1024)
    _, counts = np.unique(rows, return_counts=True)
    assert report["user_id"].distinct == 2000
    assert report["user_id"].colliding == int(counts[counts > 1].sum()) > 1000
    assert report["user_id"].flagged and "user_id" in report["user_id"].describe()
    assert report["device"].distinct == 2 and not report["device"].flagged
    assert report["tags"].distinct == 2 and report["tags"].colliding == 0


def test_a_generous_hash_space_is_not_flagged() -> None:
    counter = CollisionCounter(_spec(1 << 20), warn_fraction=0.05)
    counter.add(_batch([f"u{i}" for i in range(2000)]))
    (user,) = [r for r in counter.report() if r.field == "user_id"]
    assert user.colliding_fraction < 0.05 and not user.flagged
