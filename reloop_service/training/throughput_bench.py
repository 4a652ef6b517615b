"""``reloop bench train``: training throughput through the real path, against a frozen-table ceiling.

Measured path: generated click logs written to Parquet, read by ``data.ingest.open_days`` (validation
pass done before timing), re-batched, transformed by ``data.transforms.transform`` and trained by
``trainer.train`` with the default optimizers (dense Adam + ``RowSparseAdam`` on the tables).

Ceiling: the same model and the same batches as pre-built tensors in a bare PyTorch loop with the
embedding tables frozen (no table gradient, no table update; only the MLP trains). The ratio says how
much the data path and the sparse table updates cost on top of the dense compute.

Both are timed in steady state: from the end of the first optimizer step to the end of the last.
"""

from __future__ import annotations

import gc
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reloop_service.data.ingest import open_days
from reloop_service.data.spec import CategoricalField, FeatureSpec
from reloop_service.data.transforms import FeatureBatch, labels_of, transform
from reloop_service.training.layers import MLP
from reloop_service.training.models import build_model
from reloop_service.training.trainer import TrainConfig, rebatch, train

BENCH_DAY = date(2024, 1, 1)
FIELDS = 8
BUCKETS = 2**20
EMBEDDING_DIM = 16
HIDDEN = (256, 128, 64)
BATCH = 4096


def bench_spec(fields: int = FIELDS, buckets: int = BUCKETS) -> FeatureSpec:
    """``fields`` categorical fields of ``buckets`` rows each, nothing else."""
    return FeatureSpec(
        label="label",
        impression_id="impression_id",
        event_time="event_time",
        categorical=tuple(CategoricalField(f"c{i}", buckets) for i in range(fields)),
    )


def write_bench_logs(root: Path, rows: int, *, fields: int = FIELDS, seed: int = 0) -> Path:
    """Click logs with Zipf-distributed string ids (a few hot, a long tail) at ``root/dt=.../``."""
    rng = np.random.default_rng(seed)
    folder = root / f"dt={BENCH_DAY.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    start = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)
    columns: dict[str, Any] = {
        "impression_id": pc.cast(pa.array(np.arange(rows, dtype=np.int64)), pa.string()),
        "event_time": pa.array(
            start + np.sort(rng.integers(0, 86_400_000_000, rows)), pa.timestamp("us", "UTC")
        ),
    }
    logit = np.full(rows, -1.5)
    for i in range(fields):
        ids = np.minimum(rng.zipf(1.2, rows), 5_000_000).astype(np.int64)
        columns[f"c{i}"] = pc.cast(pa.array(ids), pa.string())
        logit += np.where(ids % 7 == 0, 0.5, -0.1)
    columns["label"] = pa.array((rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int64))
    path = folder / "part-0.parquet"
    pq.write_table(pa.table(columns), path, row_group_size=65536)
    return path


@dataclass
class BenchFigures:
    rows: int
    batch_size: int
    threads: int
    measured_rows_per_s: float
    measured_end_to_end_rows_per_s: float
    ceiling_rows_per_s: float
    stock_sparse_adam_rows_per_s: float | None
    ingest_open_s: float
    samples: dict[str, list[float]]
    measured_rows_per_cpu_s: float = float("nan")  # rows per second of process CPU time
    ceiling_rows_per_cpu_s: float = float("nan")

    @property
    def ratio(self) -> float:
        return self.measured_rows_per_s / self.ceiling_rows_per_s

    @property
    def end_to_end_ratio(self) -> float:
        """End-to-end rate (model and optimizer state built, checkpoint taken) over the steady rate."""
        return self.measured_end_to_end_rows_per_s / self.measured_rows_per_s

    @property
    def cpu_ratio(self) -> float:
        """The ratio in CPU time of all threads (data preparation included): less load-dependent."""
        return self.measured_rows_per_cpu_s / self.ceiling_rows_per_cpu_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "batch_size": self.batch_size,
            "threads": self.threads,
            "measured_rows_per_s": round(self.measured_rows_per_s),
            "measured_end_to_end_rows_per_s": round(self.measured_end_to_end_rows_per_s),
            "ceiling_rows_per_s": round(self.ceiling_rows_per_s),
            "ratio": round(self.ratio, 3),
            "measured_rows_per_cpu_s": round(self.measured_rows_per_cpu_s),
            "ceiling_rows_per_cpu_s": round(self.ceiling_rows_per_cpu_s),
            "cpu_ratio": round(self.cpu_ratio, 3),
            "end_to_end_ratio": round(self.end_to_end_ratio, 3),
            "stock_sparse_adam_rows_per_s": (
                round(self.stock_sparse_adam_rows_per_s) if self.stock_sparse_adam_rows_per_s else None
            ),
            "ingest_open_s": round(self.ingest_open_s, 2),
            "samples": {k: [round(v) for v in vs] for k, vs in self.samples.items()},
        }


class _StepClock:
    """Times steady state: from the end of the first step to the end of the last.

    Wall clock, and the process's CPU time (every thread: training and data preparation). On a
    shared machine the wall-clock figure depends on what else runs; the CPU-time one much less.
    """

    def __init__(self) -> None:
        self.t0: float | None = None
        self.t1 = 0.0
        self.c0 = 0.0
        self.c1 = 0.0
        self.rows = 0

    def __call__(self, step: int, rows: int, loss: float) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        if self.t0 is None:
            self.t0, self.c0 = now, cpu
        else:
            self.rows += rows
        self.t1, self.c1 = now, cpu

    @property
    def rows_per_s(self) -> float:
        if self.t0 is None or self.t1 <= self.t0:
            return float("nan")
        return self.rows / (self.t1 - self.t0)

    @property
    def rows_per_cpu_s(self) -> float:
        if self.t0 is None or self.c1 <= self.c0:
            return float("nan")
        return self.rows / (self.c1 - self.c0)


def _ceiling(spec: FeatureSpec, batches: list[tuple[FeatureBatch, Tensor]], seed: int) -> _StepClock:
    """Bare loop, pre-built tensors, frozen tables: only the MLP trains."""
    torch.manual_seed(seed)
    model = build_model("dnn", spec, embedding_dim=EMBEDDING_DIM, hidden=list(HIDDEN))
    for table in model.sparse_tables():
        table.materialize()  # real rows in real pages (an untouched table reads the zero page)
        table.track_rows = False
    model.train()
    opt = torch.optim.Adam(model.dense_parameters(), lr=1e-3)
    clock = _StepClock()
    for features, labels in batches:
        opt.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(model(features), labels)
        loss.backward()
        opt.step()
        clock(0, len(labels), float(loss.detach()))
    return clock


class _StockDNN(nn.Module):
    """The same DNN on ``nn.Embedding(sparse=True)`` tables, for the stock ``SparseAdam`` comparison."""

    def __init__(self, fields: int, buckets: int) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(buckets, EMBEDDING_DIM, sparse=True) for _ in range(fields))
        self.mlp = MLP(fields * EMBEDDING_DIM, HIDDEN)
        self.out = nn.Linear(HIDDEN[-1], 1)

    def forward(self, cat: Tensor) -> Tensor:
        emb = torch.cat([t(cat[:, i]) for i, t in enumerate(self.tables)], dim=1)
        return self.out(self.mlp(emb)).squeeze(-1)


def _stock(spec: FeatureSpec, batches: list[tuple[FeatureBatch, Tensor]], seed: int) -> float:
    torch.manual_seed(seed)
    model = _StockDNN(len(spec.categorical), spec.categorical[0].buckets)
    sparse = torch.optim.SparseAdam(list(model.tables.parameters()), lr=1e-2)
    dense = torch.optim.Adam([*model.mlp.parameters(), *model.out.parameters()], lr=1e-3)
    clock = _StepClock()
    for features, labels in batches:
        sparse.zero_grad()
        dense.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(features.cat), labels)
        loss.backward()
        sparse.step()
        dense.step()
        clock(0, len(labels), float(loss.detach()))
    return clock.rows_per_s


def run_train_bench(
    *,
    rows: int = 150_000,
    batch_size: int = BATCH,
    threads: int | None = None,
    seed: int = 0,
    repeats: int = 3,
    compare_stock: bool = False,
    workdir: Path | None = None,
) -> BenchFigures:
    """Generate logs, measure the real training path and the frozen-table ceiling, return the figures.

    Each measurement runs ``repeats`` times, alternating measured and ceiling runs so both see the
    same background load, and keeps the best of each (on a shared machine the best run is the one
    least disturbed by others; medians are in ``samples``).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if threads is not None:
        torch.set_num_threads(threads)
    spec = bench_spec()
    samples: dict[str, list[float]] = {
        "measured": [],
        "end_to_end": [],
        "ceiling": [],
        "stock": [],
        "measured_cpu": [],
        "ceiling_cpu": [],
    }
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp)
        write_bench_logs(root, rows, seed=seed)
        t = time.perf_counter()
        daylog = open_days(str(root), [BENCH_DAY], spec, batch_size=65536, quarantine=False)
        ingest_open_s = time.perf_counter() - t
        prebuilt = [
            (transform(spec, b), labels_of(spec, b)) for b in rebatch(daylog.iter_batches(), batch_size)
        ]
        config = TrainConfig(
            model="dnn",
            model_args={"embedding_dim": EMBEDDING_DIM, "hidden": list(HIDDEN)},
            loss="bce",
            batch_size=batch_size,
            seed=seed,
            threads=threads,
        )
        for _ in range(repeats):
            ceiling = _ceiling(spec, prebuilt, seed)
            samples["ceiling"].append(ceiling.rows_per_s)
            samples["ceiling_cpu"].append(ceiling.rows_per_cpu_s)
            gc.collect()
            if compare_stock:
                samples["stock"].append(_stock(spec, prebuilt, seed))
                gc.collect()
            clock = _StepClock()
            t = time.perf_counter()
            result = train(
                config=config, spec=spec, batches=daylog.iter_batches, on_batch=clock, progress=False
            )
            samples["end_to_end"].append(result.rows / (time.perf_counter() - t))
            samples["measured"].append(clock.rows_per_s)
            samples["measured_cpu"].append(clock.rows_per_cpu_s)
            del result
            gc.collect()
    return BenchFigures(
        rows=rows,
        batch_size=batch_size,
        threads=torch.get_num_threads(),
        measured_rows_per_s=max(samples["measured"]),
        measured_end_to_end_rows_per_s=max(samples["end_to_end"]),
        ceiling_rows_per_s=max(samples["ceiling"]),
        stock_sparse_adam_rows_per_s=max(samples["stock"]) if samples["stock"] else None,
        ingest_open_s=ingest_open_s,
        samples=samples,
        measured_rows_per_cpu_s=max(samples["measured_cpu"]),
        ceiling_rows_per_cpu_s=max(samples["ceiling_cpu"]),
    )
