"""A click stream with known ground truth, standing in for users in the demo, tests and benchmarks.

Each impression's true CTR is ``sigmoid(logit)`` with
``logit = base + user bias + item bias + <user factor, item factor drifted to day d> / sqrt(k)
+ interest match + category trend(d) + device + position + hour + price``. Users and items have Zipf
popularity, new users and items arrive every day (the newest cohort gets a fixed share of traffic),
item factors drift a little each day and category popularity cycles over two weeks. Everything is a
pure function of ``(seed, day)``: days can be generated in any order, in any process, and the true CTR
of a logged row can be recomputed from its features alone. The features match ``default_spec()``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reloop_service.data.ingest import day_dir, parse_event_time
from reloop_service.data.period import Period
from reloop_service.data.spec import FeatureSpec, default_spec
from reloop_service.storage import filesystem, is_local, join, write_atomic

__all__ = ["ClickSimulator", "SimulatorConfig", "bayes_logloss"]

DEVICES = ("ios", "android", "web")
_DEVICE_P = np.array([0.45, 0.4, 0.15])
_DEVICE_EFFECT = np.array([0.2, 0.0, -0.35])
_BLOCK = 4096


@dataclass(frozen=True)
class SimulatorConfig:
    """Size and shape of the simulated world (defaults: a demo day of 20k impressions)."""

    impressions_per_day: int = 20_000
    n_users: int = 20_000
    n_items: int = 5_000
    new_users_per_day: int = 1_000
    new_items_per_day: int = 250
    new_user_share: float = 0.08
    new_item_share: float = 0.12
    user_zipf: float = 1.05
    item_zipf: float = 1.15
    factor_dim: int = 8
    n_categories: int = 24
    n_segments: int = 8
    n_regions: int = 12
    positions: int = 5
    base_logit: float = -2.2
    affinity_scale: float = 1.2
    drift_per_day: float = 0.08


def bayes_logloss(ctr: np.ndarray, labels: np.ndarray | None = None) -> float:
    """Logloss of the true CTR: on drawn ``labels`` if given, else its expectation (the entropy)."""
    p = np.clip(np.asarray(ctr, dtype=np.float64), 1e-12, 1 - 1e-12)
    if labels is None:
        return float(np.mean(-(p * np.log(p) + (1 - p) * np.log1p(-p))))
    y = np.asarray(labels, dtype=np.float64)
    return float(np.mean(-(y * np.log(p) + (1 - y) * np.log1p(-p))))


def _names(prefix: str, n: int) -> np.ndarray:
    return np.array([f"{prefix}{i}" for i in range(n)], dtype=object)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class ClickSimulator:
    """Deterministic per ``seed``: ``impressions(day)``, ``true_ctr``, ``draw_clicks``, ``write_day``."""

    def __init__(
        self, seed: int = 0, *, start: date = date(2024, 1, 1), config: SimulatorConfig | None = None
    ):
        self.seed = int(seed)
        self.start = start
        self.config = config or SimulatorConfig()
        self.spec: FeatureSpec = default_spec()
        c = self.config
        rng = np.random.default_rng([self.seed, 0])
        self._cat_vec = rng.normal(size=(c.n_categories, c.factor_dim))
        self._cat_phase = rng.uniform(0, 2 * math.pi, size=c.n_categories)
        self._user_perm = rng.permutation(c.n_users)
        self._item_perm = rng.permutation(c.n_items)
        self._blocks: dict[tuple[str, int], dict[str, np.ndarray]] = {}
        self._cdf: dict[tuple[str, int], np.ndarray] = {}

    # --- the world -------------------------------------------------------------------------------------
    def day_index(self, day: date) -> int:
        d = (day - self.start).days
        if d < 0:
            raise ValueError(f"day {day} is before the simulation start {self.start}")
        return d

    def _block(self, kind: str, b: int) -> dict[str, np.ndarray]:
        key = (kind, b)
        if key in self._blocks:
            return self._blocks[key]
        c = self.config
        rng = np.random.default_rng([self.seed, 1 if kind == "user" else 2, b])
        if kind == "user":
            factor = rng.normal(size=(_BLOCK, c.factor_dim))
            activity = rng.lognormal(mean=1.0, sigma=0.8, size=_BLOCK)
            bias = 0.25 * (np.log(activity) - 1.0) / 0.8 + rng.normal(0, 0.3, size=_BLOCK)
            # Interests: the categories closest to the user's taste, 1..4 of them.
            scores = factor @ self._cat_vec.T + rng.gumbel(size=(_BLOCK, c.n_categories))
            top = np.argsort(-scores, axis=1)[:, :4]
            count = rng.integers(1, 5, size=_BLOCK)
            interests = np.where(np.arange(4)[None, :] < count[:, None], top, -1)
            block = {
                "factor": factor,
                "bias": bias,
                "activity": activity,
                "segment": rng.integers(0, c.n_segments, size=_BLOCK),
                "region": rng.integers(0, c.n_regions, size=_BLOCK),
                "interests": interests,
            }
        else:
            category = rng.integers(0, c.n_categories, size=_BLOCK)
            factor = 0.8 * self._cat_vec[category] + 0.6 * rng.normal(size=(_BLOCK, c.factor_dim))
            price = rng.lognormal(mean=2.5 + 0.05 * category, sigma=0.7, size=_BLOCK)
            block = {
                "factor": factor,
                "drift": rng.normal(size=(_BLOCK, c.factor_dim)) / math.sqrt(c.factor_dim),
                "bias": rng.normal(0, 0.4, size=_BLOCK),
                "category": category,
                "price": price,
            }
        self._blocks[key] = block
        return block

    def _attrs(self, kind: str, ids: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Gather per-entity attributes for ``ids`` (any order, repeats allowed)."""
        ids = np.asarray(ids, dtype=np.int64)
        blocks, local = np.divmod(ids, _BLOCK)
        out: dict[str, np.ndarray] = {}
        for b in np.unique(blocks):
            sel = blocks == b
            data = self._block(kind, int(b))
            for name in names:
                arr = data[name]
                if name not in out:
                    out[name] = np.zeros((len(ids), *arr.shape[1:]), dtype=arr.dtype)
                out[name][sel] = arr[local[sel]]
        if len(ids) == 0:
            for name in names:
                arr = self._block(kind, 0)[name]
                out[name] = np.zeros((0, *arr.shape[1:]), dtype=arr.dtype)
        return out

    def _population(self, kind: str, d: int) -> tuple[int, int]:
        """(entities born before day d, entities born on day d)."""
        c = self.config
        base, per_day = (
            (c.n_users, c.new_users_per_day) if kind == "user" else (c.n_items, c.new_items_per_day)
        )
        if d == 0:
            return base, 0
        return base + per_day * (d - 1), per_day

    def _sample(self, kind: str, d: int, n: int, rng: np.random.Generator) -> np.ndarray:
        c = self.config
        old, new = self._population(kind, d)
        share, a, perm = (
            (c.new_user_share, c.user_zipf, self._user_perm)
            if kind == "user"
            else (c.new_item_share, c.item_zipf, self._item_perm)
        )
        key = (kind, old)
        if key not in self._cdf:
            w = np.arange(1, old + 1, dtype=np.float64) ** -a
            self._cdf[key] = np.cumsum(w) / w.sum()
        rank = np.minimum(np.searchsorted(self._cdf[key], rng.random(n)), old - 1)
        ids = np.where(rank < len(perm), perm[np.minimum(rank, len(perm) - 1)], rank)
        if new:
            fresh = rng.random(n) < share
            ids = np.where(fresh, old + rng.integers(0, new, size=n), ids)
        return ids.astype(np.int64)

    # --- impressions -----------------------------------------------------------------------------------
    def impressions_table(self, day: date, n: int | None = None) -> pa.Table:
        """The day's impressions as columns: ``impression_id``, ``event_time`` (UTC) and the features."""
        c = self.config
        d = self.day_index(day)
        n = c.impressions_per_day if n is None else int(n)
        rng = np.random.default_rng([self.seed, 3, d])
        hour_p = 1.0 + 0.7 * np.sin(2 * math.pi * (np.arange(24) - 14) / 24)
        hours = rng.choice(24, size=n, p=hour_p / hour_p.sum())
        seconds = np.sort(hours * 3600 + rng.integers(0, 3600, size=n))
        users = self._sample("user", d, n, rng)
        items = self._sample("item", d, n, rng)
        device = rng.choice(len(DEVICES), size=n, p=_DEVICE_P)
        position = rng.integers(1, c.positions + 1, size=n)
        u = self._attrs("user", users, ("segment", "region", "activity", "interests"))
        it = self._attrs("item", items, ("category", "price"))
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        micros = int(midnight.timestamp()) * 1_000_000 + seconds.astype(np.int64) * 1_000_000
        cat_names = np.array([f"c{i}" for i in range(c.n_categories)], dtype=object)
        mask = u["interests"] >= 0
        offsets = np.concatenate([[0], np.cumsum(mask.sum(axis=1))]).astype(np.int32)
        interests = pa.ListArray.from_arrays(
            pa.array(offsets), pa.array(cat_names[u["interests"][mask]], pa.string())
        )
        noise = rng.lognormal(0.0, 0.3, size=n)
        return pa.table(
            {
                "impression_id": pa.array([f"{day:%Y%m%d}-{i:08d}" for i in range(n)], pa.string()),
                "event_time": pa.array(micros, pa.timestamp("us", tz="UTC")),
                "user_id": pa.array(users, pa.int64()),
                "item_id": pa.array(items, pa.int64()),
                "item_category": pa.array(cat_names[it["category"]], pa.string()),
                "user_segment": pa.array(_names("s", c.n_segments)[u["segment"]], pa.string()),
                "device": pa.array(np.array(DEVICES, dtype=object)[device], pa.string()),
                "hour": pa.array(seconds // 3600, pa.int64()),
                "position": pa.array(position, pa.int64()),
                "region": pa.array(_names("r", c.n_regions)[u["region"]], pa.string()),
                "item_price": pa.array(np.round(it["price"], 2), pa.float64()),
                "user_activity": pa.array(np.round(u["activity"] * noise, 3), pa.float64()),
                "user_interests": interests,
            }
        )

    def impressions(self, day: date, n: int | None = None) -> list[dict[str, Any]]:
        """The day's impressions as JSON-able dicts (``event_time`` as an ISO-8601 UTC string)."""
        table = self.impressions_table(day, n)
        rows = table.drop_columns(["event_time"]).to_pylist()
        times = table.column("event_time").cast(pa.int64()).to_numpy()
        for row, us in zip(rows, times.tolist(), strict=True):
            row["event_time"] = datetime.fromtimestamp(us / 1e6, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return rows

    # --- ground truth ----------------------------------------------------------------------------------
    def true_ctr(self, impressions: pa.Table | pa.RecordBatch | Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Ground-truth click probability of each impression, recomputed from its features and time."""
        if isinstance(impressions, pa.Table | pa.RecordBatch):
            cols = {
                name: impressions.column(name)
                for name in ("user_id", "item_id", "device", "position", "hour", "event_time")
            }
            users = np.asarray(cols["user_id"].cast(pa.int64()).to_numpy(), dtype=np.int64)
            items = np.asarray(cols["item_id"].cast(pa.int64()).to_numpy(), dtype=np.int64)
            device = cols["device"].to_pylist()
            position = np.asarray(cols["position"].cast(pa.int64()).to_numpy(), dtype=np.int64)
            hour = np.asarray(cols["hour"].cast(pa.int64()).to_numpy(), dtype=np.int64)
            times = parse_event_time(cols["event_time"])
        else:
            users = np.array([int(r["user_id"]) for r in impressions], dtype=np.int64)
            items = np.array([int(r["item_id"]) for r in impressions], dtype=np.int64)
            device = [r["device"] for r in impressions]
            position = np.array([int(r["position"]) for r in impressions], dtype=np.int64)
            hour = np.array([int(r["hour"]) for r in impressions], dtype=np.int64)
            times = parse_event_time(pa.array([r["event_time"] for r in impressions]))
        if times.null_count:
            raise ValueError("true_ctr: some impressions have no parsable event_time")
        epoch_days = times.cast(pa.int64()).to_numpy() // 86_400_000_000
        d = epoch_days - (self.start - date(1970, 1, 1)).days
        if len(d) and d.min() < 0:
            raise ValueError(f"true_ctr: impressions before the simulation start {self.start}")
        return _sigmoid(self._logit(users, items, device, position, hour, d))

    def _logit(
        self,
        users: np.ndarray,
        items: np.ndarray,
        device: Sequence[str],
        position: np.ndarray,
        hour: np.ndarray,
        d: np.ndarray,
    ) -> np.ndarray:
        c = self.config
        u = self._attrs("user", users, ("factor", "bias", "interests"))
        it = self._attrs("item", items, ("factor", "drift", "bias", "category", "price"))
        item_factor = it["factor"] + c.drift_per_day * d[:, None] * it["drift"]
        affinity = c.affinity_scale * np.sum(u["factor"] * item_factor, axis=1) / c.factor_dim
        match = (u["interests"] == it["category"][:, None]).any(axis=1)
        trend = 0.5 * np.sin(2 * math.pi * d / 14.0 + self._cat_phase[it["category"]])
        dev = np.array([_DEVICE_EFFECT[DEVICES.index(x)] if x in DEVICES else 0.0 for x in device])
        pos = -0.35 * (position - 1)
        hr = 0.25 * np.sin(2 * math.pi * (hour - 18) / 24)
        price = -0.3 * (np.log(it["price"]) - 3.0)
        logit = (
            c.base_logit + u["bias"] + it["bias"] + affinity + 0.9 * match + trend + dev + pos + hr + price
        )
        return np.asarray(logit, dtype=np.float64)

    def draw_clicks(self, ctr: np.ndarray, day: date) -> np.ndarray:
        """Bernoulli(ctr) labels as int8, from the day's own random stream."""
        rng = np.random.default_rng([self.seed, 4, self.day_index(day)])
        return (rng.random(len(ctr)) < np.asarray(ctr)).astype(np.int8)

    def simulate_day(self, day: date, n: int | None = None) -> tuple[pa.Table, np.ndarray]:
        """The day's click log (impressions + ``label``) and the true CTR of each row."""
        table = self.impressions_table(day, n)
        ctr = self.true_ctr(table)
        labels = self.draw_clicks(ctr, day)
        return table.append_column("label", pa.array(labels, pa.int8())), ctr

    # --- output ----------------------------------------------------------------------------------------
    def write_day(
        self,
        logs_uri: str,
        day: date,
        rows: pa.Table | Sequence[Mapping[str, Any]],
        *,
        labels: np.ndarray | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> str:
        """Write one day's click log as ``<logs_uri>/dt=YYYY-MM-DD/part-00000.parquet``; return its URI.

        ``rows`` carry a ``label`` column/key unless ``labels`` is given. Rewriting a day replaces it.
        """
        table = rows if isinstance(rows, pa.Table) else _rows_to_table(rows)
        if labels is not None:
            if "label" in table.column_names:
                table = table.drop_columns(["label"])
            table = table.append_column("label", pa.array(np.asarray(labels), pa.int8()))
        if "label" not in table.column_names:
            raise ValueError("write_day: rows have no 'label'; pass labels= or rows with a label")
        fs, root = filesystem(logs_uri, storage_options)
        folder = day_dir(root, day)
        path = join(folder, "part-00000.parquet")
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd", row_group_size=65_536)
        write_atomic(fs, path, buf.getvalue())
        return path if is_local(fs) else fs.unstrip_protocol(path)

    def write_period(
        self,
        logs_uri: str,
        period: Period,
        table: pa.Table,
        *,
        labels: np.ndarray | None = None,
        marker: bool = True,
        storage_options: dict[str, Any] | None = None,
    ) -> list[str]:
        """Write the rows of ``table`` whose event time falls in ``period``, one file per partition.

        An hourly period goes to ``<logs_uri>/dt=YYYY-MM-DD/hr=HH/part-00000.parquet`` (a daily one to
        ``dt=YYYY-MM-DD``); with ``marker`` each partition then gets its ``_SUCCESS`` file, written last,
        as Spark and Hive do. Returns the files' URIs.
        """
        if labels is not None:
            if "label" in table.column_names:
                table = table.drop_columns(["label"])
            table = table.append_column("label", pa.array(np.asarray(labels), pa.int8()))
        times = parse_event_time(table.column("event_time")).cast(pa.int64()).to_numpy(zero_copy_only=False)
        fs, root = filesystem(logs_uri, storage_options)
        uris: list[str] = []
        for part in period.parts():
            for folder_name in part.partitions():
                start, end = _partition_bounds(folder_name, part)
                keep = (times >= start) & (times < end)
                folder = join(root, folder_name)
                path = join(folder, "part-00000.parquet")
                buf = io.BytesIO()
                pq.write_table(table.filter(pa.array(keep)), buf, compression="zstd", row_group_size=65_536)
                write_atomic(fs, path, buf.getvalue())
                if marker:
                    write_atomic(fs, join(folder, "_SUCCESS"), b"")
                uris.append(path if is_local(fs) else fs.unstrip_protocol(path))
        return uris

    def days(self, start: date, count: int) -> list[date]:
        """``count`` consecutive days from ``start``."""
        return [start + timedelta(days=i) for i in range(count)]


def _partition_bounds(folder: str, part: Period) -> tuple[int, int]:
    """Epoch microseconds [start, end) of one partition folder of ``part`` (an hour of a 2h period...)."""
    if "/hr=" not in folder or "/mi=" in folder:
        start = part.start
        return _micros(start), _micros(part.end)
    day_s, hour_s = folder.removeprefix("dt=").split("/hr=")
    start = datetime.fromisoformat(day_s).replace(hour=int(hour_s), tzinfo=UTC)
    return _micros(start), _micros(start + timedelta(hours=1))


def _micros(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def _rows_to_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Dict rows (as ``impressions`` returns, plus ``label``) to the simulator's column types."""
    spec = default_spec()
    names = ["impression_id", "event_time", *spec.feature_names]
    if rows and "label" in rows[0]:
        names.append("label")
    types = {
        "impression_id": pa.string(),
        "user_id": pa.int64(),
        "item_id": pa.int64(),
        "hour": pa.int64(),
        "position": pa.int64(),
        "item_price": pa.float64(),
        "user_activity": pa.float64(),
        "user_interests": pa.list_(pa.string()),
        "label": pa.int8(),
    }
    cols: dict[str, pa.Array] = {}
    for name in names:
        values = [r.get(name) for r in rows]
        if name == "event_time":
            cols[name] = parse_event_time(pa.array(values))
        else:
            cols[name] = pa.array(values, types.get(name, pa.string()))
    return pa.table(cols)
