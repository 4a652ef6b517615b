"""Paired bootstrap over users between two ``ablate_recipe.py --save-preds`` folders (same seeds).

Or between two replays' predictions: give each side as a quoted glob of the replay's per-seed Parquet
files (``'out/predictions/full_retrain-s*.parquet'``), seeds matched in name order.

Prints, for the selection bins 4-10 and the reported bins 11-30, the pooled AUC and logloss of the
candidate minus the baseline (mean over seeds) with a 95% interval over users (``replay/stats.py``).

    python scripts/ablate_compare.py BASELINE_DIR CANDIDATE_DIR --seeds 4
    python scripts/ablate_compare.py 'a/predictions/full_retrain-s*.parquet' 'b/predictions/...' --seeds 5

``--ensemble`` scores the candidate's seeds as one model, the mean of their logits, against each of the
baseline's seeds (give the same folder twice to see what averaging the seeds' models is worth).

``--prev-bin-calibration platt`` rescales the candidate's predictions of each bin k by a Platt scaling
(slope and bias on the logit) fitted on its own predictions and labels of bin k-1, the way a service
could recalibrate the next model on the last day's served predictions (the first scored bin stays as
it is); ``temperature`` fits the slope alone. The AUC of a bin does not change; pooled AUC and logloss
do. Give the same folder twice to see what the recalibration is worth.
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from reloop_service.replay.stats import paired_bootstrap


def load(where: str, seeds: int) -> list[dict[str, np.ndarray]]:
    """One dict (y, p, bin, user) per seed: from an ablation folder or a glob of replay Parquet files."""
    if "*" not in where:
        return [dict(np.load(Path(where) / f"s{i}.npz")) for i in range(seeds)]
    files = sorted(glob.glob(where))
    if len(files) != seeds:
        raise SystemExit(f"{where}: {len(files)} files for {seeds} seeds")
    out = []
    for f in files:
        t = pq.read_table(f).to_pandas().sort_values("impression_id", kind="stable")
        out.append(
            {
                "y": t["label"].to_numpy(dtype=float),
                "p": t["ctr"].to_numpy(dtype=float),
                "bin": t["bin"].to_numpy(),
                "user": t["cluster"].to_numpy(dtype=str),
            }
        )
    return out


def ensemble(runs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One run whose prediction is the sigmoid of the mean logit of ``runs`` (same rows)."""
    p = np.clip(np.stack([r["p"] for r in runs]), 1e-7, 1 - 1e-7)
    z = np.log(p / (1 - p)).mean(axis=0)
    return {**runs[0], "p": 1 / (1 + np.exp(-z))}


def platt(y: np.ndarray, z: np.ndarray, *, bias: bool = True, steps: int = 30) -> tuple[float, float]:
    """Slope and bias (0 unless ``bias``) minimizing the logloss of sigmoid(a·z + b): Newton's method."""
    ab = np.array([1.0, 0.0])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(ab[0] * z + ab[1])))
        w = p * (1 - p)
        if not bias:
            ab[0] -= np.sum((p - y) * z) / np.sum(w * z * z)
            continue
        grad = np.array([np.sum((p - y) * z), np.sum(p - y)])
        hess = np.array([[np.sum(w * z * z), np.sum(w * z)], [np.sum(w * z), np.sum(w)]])
        ab = ab - np.linalg.solve(hess, grad)
    return float(ab[0]), float(ab[1])


def prev_bin_calibration(run: dict[str, np.ndarray], how: str) -> dict[str, np.ndarray]:
    """``run`` with bin k's predictions rescaled by the fit on bin k-1's (see the module doc)."""
    p = np.clip(run["p"], 1e-7, 1 - 1e-7)
    z = np.log(p / (1 - p))
    out = run["p"].copy()
    bins = run["bin"]
    for k in np.unique(bins):
        before = bins == k - 1
        if before.any():
            a, b = platt(run["y"][before], z[before], bias=how == "platt")
            now = bins == k
            out[now] = 1 / (1 + np.exp(-(a * z[now] + b)))
    return {**run, "p": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("baseline", help="A --save-preds folder, or a quoted glob of replay Parquet files.")
    ap.add_argument("candidate", help="The same kind as the baseline.")
    ap.add_argument("--seeds", type=int, required=True)
    ap.add_argument("--replicates", type=int, default=1000)
    ap.add_argument("--ensemble", action="store_true", help="The candidate's seeds as one averaged model.")
    ap.add_argument(
        "--prev-bin-calibration",
        choices=["platt", "temperature"],
        default=None,
        help="Recalibrate the candidate's bins on their previous bin.",
    )
    a = ap.parse_args()
    base, cand = load(str(a.baseline), a.seeds), load(str(a.candidate), a.seeds)
    if a.ensemble:
        cand = [ensemble(cand)] * len(base)
    if a.prev_bin_calibration:
        cand = [prev_bin_calibration(c, a.prev_bin_calibration) for c in cand]
    for name, lo, hi in (("selection 4-10", 4, 10), ("reported 11-30", 11, 10**9)):
        m = (base[0]["bin"] >= lo) & (base[0]["bin"] <= hi)
        if not m.any():
            continue
        y, users = base[0]["y"][m], base[0]["user"][m]
        for c in cand:
            if not np.array_equal(c["y"][m], y):
                raise SystemExit("the two folders scored different rows")
        result = paired_bootstrap(
            y, [c["p"][m] for c in cand], [b["p"][m] for b in base], users, replicates=a.replicates
        )
        out = {
            k: {f: round(v, 4) if isinstance(v, float) else v for f, v in iv.to_dict().items()}
            for k, iv in result.items()
        }
        print(name, f"({len(np.unique(users))} users)", json.dumps(out))


if __name__ == "__main__":
    main()
