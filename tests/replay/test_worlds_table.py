"""The several-worlds table pools calibration by hour over the worlds' rows and gives its noise floor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reloop_service.replay.summary import across_worlds, run_figures


def _predictions(path: Path, *, ctr: np.ndarray, truth: np.ndarray, labels: np.ndarray) -> Path:
    n = len(ctr)
    pq.write_table(
        pa.table(
            {
                "bin": np.full(n, 11),
                "label": labels.astype(np.int8),
                "ctr": ctr,
                "true_ctr": truth,
                "hour": np.arange(n) % 2,
            }
        ),
        path,
    )
    return path


def _world(tmp_path: Path, name: str, *, scale: float, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    rng = np.random.default_rng(seed)
    truth = np.full(4000, 0.1)
    labels = (rng.random(4000) < truth).astype(np.int8)
    path = _predictions(tmp_path / f"{name}.parquet", ctr=truth * scale, truth=truth, labels=labels)
    figs = run_figures(path, bins_from=11)
    return {"strategies": {"bce": {"seeds": {"0": figs}, "gap_to_bayes": {"mean": 0.05}}}}, figs


def test_pooled_calibration_is_the_ratio_of_sums_over_the_worlds(tmp_path: Path) -> None:
    w0, f0 = _world(tmp_path, "w0", scale=0.9, seed=1)
    w1, f1 = _world(tmp_path, "w1", scale=1.1, seed=2)
    text = across_worlds({0: w0, 1: w1}, order=["bce"])
    row = next(line for line in text.splitlines() if line.startswith("| bce"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # columns: strategy, gap w0, gap w1, mean gap, worst world, pooled, noise floor, vs true CTR
    ratios = []
    floors = []
    for h in ("0", "1"):
        _, p0, y0, t0 = f0["hour_sums"][h]
        _, p1, y1, t1 = f1["hour_sums"][h]
        ratios.append((p0 + p1) / (y0 + y1))
        floors.append((t0 + t1) / (y0 + y1))
    assert cells[5] == f"{min(ratios):.3f}..{max(ratios):.3f}"
    assert cells[6] == f"{min(floors):.3f}..{max(floors):.3f}"
    # the worst single world is wider than the pooled range: one world runs 10% low, the other high
    lo, hi = (float(x) for x in cells[4].split(".."))
    assert lo < min(ratios) and hi > max(ratios)
    # the true CTR against its own sampled labels strays from 1 by label noise only
    assert all(abs(f - 1) < 0.15 for f in floors)
