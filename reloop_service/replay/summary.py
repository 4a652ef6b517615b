"""Replay results: figures recomputed from the per-row predictions, JSON, markdown and PNG plots.

Every summary figure is computed from the predictions Parquet of each run (what the predict path
answered), never copied from elsewhere, so anyone can recompute it from the files.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reloop_service.replay.stats import paired_bootstrap
from reloop_service.training.evaluation import auc, logloss

BASELINE = "bce"


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(float(x)) else None


def run_figures(predictions: str | Path, *, bins_from: int, bins_to: int | None = None) -> dict[str, Any]:
    """Pooled AUC/logloss over the rows of bins ``bins_from..bins_to`` and the mean per-bin AUC."""
    table = pq.read_table(predictions)
    b = table.column("bin").to_numpy()
    keep = b >= bins_from
    if bins_to is not None:
        keep &= b <= bins_to
    y = table.column("label").to_numpy().astype(np.float64)[keep]
    p = table.column("ctr").to_numpy()[keep]
    bb = b[keep]
    if y.size == 0:
        raise ValueError(f"{predictions}: no rows in bins {bins_from}..{bins_to}")
    per_bin = [auc(y[bb == k], p[bb == k]) for k in np.unique(bb)]
    out: dict[str, Any] = {
        "rows": int(y.size),
        "pooled_auc": auc(y, p),
        "pooled_logloss": logloss(y, p),
        "mean_bin_auc": float(np.nanmean(per_bin)),
    }
    if "true_ctr" in table.column_names:
        t = table.column("true_ctr").to_numpy()[keep]
        out["bayes_logloss"] = logloss(y, t)
        out["gap_to_bayes"] = out["pooled_logloss"] / out["bayes_logloss"] - 1.0
        out["bayes_auc"] = auc(y, t)
    if "hour" in table.column_names:
        # Served calibration (mean prediction / observed CTR) per hour of the day, pooled over bins.
        # With the simulator's true CTR also against it: the observed CTR of one hour carries label
        # noise of its own (~3% at 20k impressions a day over 20 days), the true one does not.
        hours = np.asarray(table.column("hour").to_numpy(zero_copy_only=False))[keep]
        truth = table.column("true_ctr").to_numpy()[keep] if "true_ctr" in table.column_names else None
        by_hour, by_hour_true, oracle, sums = {}, {}, {}, {}
        for h in sorted(set(hours.tolist()), key=str):
            m = hours == h
            by_hour[str(h)] = float(p[m].mean() / y[m].mean()) if y[m].sum() else float("nan")
            # [rows, Σ prediction, Σ label, Σ true CTR]: sums pool exactly over runs (across_worlds)
            sums[str(h)] = [int(m.sum()), float(p[m].sum()), float(y[m].sum())]
            if truth is not None:
                by_hour_true[str(h)] = float(p[m].mean() / truth[m].mean())
                # the true CTR's own ratio to the observed one: the measure's noise floor
                oracle[str(h)] = float(truth[m].mean() / y[m].mean()) if y[m].sum() else float("nan")
                sums[str(h)].append(float(truth[m].sum()))
        out["hour_sums"] = sums
        for key, values in (
            ("calibration", by_hour),
            ("calibration_true", by_hour_true),
            ("oracle_calibration", oracle),
        ):
            if not values:
                continue
            out[f"{key}_by_hour"] = values
            finite = [v for v in values.values() if math.isfinite(v)]
            out[f"{key}_hour_min"] = min(finite) if finite else float("nan")
            out[f"{key}_hour_max"] = max(finite) if finite else float("nan")
    return out


def _mean_std(values: Sequence[float]) -> dict[str, float | None]:
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if arr.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "n": int(arr.size),
    }


FIGURES = (
    "pooled_auc",
    "pooled_logloss",
    "mean_bin_auc",
    "wall_seconds",
    "gap_to_bayes",
    "bayes_logloss",
    "calibration_hour_min",
    "calibration_hour_max",
    "calibration_true_hour_min",
    "calibration_true_hour_max",
    "oracle_calibration_hour_min",
    "oracle_calibration_hour_max",
)


def _scored_rows(path: str | Path, bins_from: int, bins_to: int | None) -> pa.Table:
    table = pq.read_table(path)
    b = table.column("bin").to_numpy()
    keep = b >= bins_from
    if bins_to is not None:
        keep &= b <= bins_to
    return table.filter(pa.array(keep))


def bootstrap_vs_baseline(
    runs: Sequence[dict[str, Any]],
    *,
    name: str,
    baseline: str,
    bins_from: int,
    bins_to: int | None,
    replicates: int = 1000,
) -> dict[str, Any] | None:
    """The paired difference ``name`` - ``baseline`` with a 95% bootstrap interval over clusters (users).

    Seeds present for both are paired; the rows must be the same (same data, same order).
    """
    by_seed: dict[str, dict[int, pa.Table]] = {name: {}, baseline: {}}
    for run in runs:
        label = run.get("label") or run["strategy"]
        if label in by_seed:
            by_seed[label][int(run["seed"])] = _scored_rows(run["predictions"], bins_from, bins_to)
    common = sorted(set(by_seed[name]) & set(by_seed[baseline]))
    if not common:
        return None
    ref = by_seed[baseline][common[0]]
    ids = ref.column("impression_id")
    for label in (name, baseline):
        for s in common:
            if not by_seed[label][s].column("impression_id").equals(ids):
                raise ValueError(f"{label} seed {s} scored other rows than {baseline}: cannot pair them")
    clusters = ref.column("cluster") if "cluster" in ref.column_names else ids
    y = ref.column("label").to_numpy().astype(np.float64)
    result = paired_bootstrap(
        y,
        [by_seed[name][s].column("ctr").to_numpy() for s in common],
        [by_seed[baseline][s].column("ctr").to_numpy() for s in common],
        np.asarray(clusters.to_numpy(zero_copy_only=False)),
        replicates=replicates,
    )
    return {
        **{k: v.to_dict() for k, v in result.items()},
        "seeds": common,
        "clusters": len(np.unique(np.asarray(clusters.to_numpy(zero_copy_only=False)))),
        "replicates": replicates,
    }


def summarize(
    runs: Sequence[dict[str, Any]],
    *,
    bins_from: int,
    bins_to: int | None = None,
    baseline: str = BASELINE,
    bootstrap: int = 1000,
) -> dict[str, Any]:
    """Per strategy: every seed's figures, mean and std across seeds, and the paired difference vs
    ``baseline``: mean ± std across seeds, and a 95% bootstrap interval over users (``bootstrap``
    replicates; 0 turns it off)."""
    per: dict[str, dict[int, dict[str, Any]]] = {}
    for run in runs:
        figs = run_figures(run["predictions"], bins_from=bins_from, bins_to=bins_to)
        figs["wall_seconds"] = float(run["wall_seconds"])
        per.setdefault(run.get("label") or run["strategy"], {})[int(run["seed"])] = figs
    out: dict[str, Any] = {"bins_from": bins_from, "bins_to": bins_to, "baseline": baseline, "strategies": {}}
    base = per.get(baseline, {})
    for name, seeds in per.items():
        entry: dict[str, Any] = {"seeds": {str(s): f for s, f in sorted(seeds.items())}}
        for fig in FIGURES:
            vals = [f[fig] for f in seeds.values() if fig in f]
            if vals:
                entry[fig] = _mean_std(vals)
        if base and name != baseline:
            common = sorted(set(seeds) & set(base))
            entry["paired_vs_" + baseline] = {
                fig: {**_mean_std([seeds[s][fig] - base[s][fig] for s in common]), "seeds": common}
                for fig in ("pooled_auc", "pooled_logloss", "mean_bin_auc")
            }
            if bootstrap:
                entry["bootstrap_vs_" + baseline] = bootstrap_vs_baseline(
                    runs,
                    name=name,
                    baseline=baseline,
                    bins_from=bins_from,
                    bins_to=bins_to,
                    replicates=bootstrap,
                )
        out["strategies"][name] = entry
    return out


def machine() -> dict[str, Any]:
    """Where the figures were measured (wall times mean nothing without it)."""
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores_visible": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def _fmt(stat: dict[str, Any] | None, digits: int = 4, signed: bool = False) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    sign = "+" if signed else ""
    return f"{stat['mean']:{sign}.{digits}f} ± {stat['std']:.{digits}f}"


def _fmt_ci(ci: dict[str, Any] | None, digits: int = 4) -> str:
    """``+0.0012 [-0.0003, +0.0027]``, bold when the interval excludes zero."""
    if not ci or ci.get("diff") is None:
        return "-"
    text = f"{ci['diff']:+.{digits}f} [{ci['low']:+.{digits}f}, {ci['high']:+.{digits}f}]"
    return f"**{text}**" if ci.get("excludes_zero") else text


def markdown(summary: dict[str, Any], *, title: str, order: Sequence[str] | None = None) -> str:
    """The results table: mean ± std across seeds, and the paired per-seed difference vs the baseline."""
    strategies = summary["strategies"]
    names = [n for n in (order or []) if n in strategies] + [n for n in strategies if n not in (order or [])]
    synthetic = any("gap_to_bayes" in strategies[n] for n in names)
    base = summary["baseline"]
    rng = f"{summary['bins_from']}..{summary['bins_to'] if summary['bins_to'] is not None else 'end'}"
    head = ["strategy", "seeds", f"pooled AUC ({rng})", "pooled logloss", "mean per-bin AUC"]
    if synthetic:
        head += ["gap to Bayes logloss"]
    head += [
        f"Δ AUC vs {base} [95% CI over users]",
        f"Δ logloss vs {base} [95% CI over users]",
        "wall s / run",
    ]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in names:
        e = strategies[n]
        paired = e.get("paired_vs_" + base) or {}
        row = [
            n,
            str(e["pooled_auc"]["n"]),
            _fmt(e.get("pooled_auc")),
            _fmt(e.get("pooled_logloss")),
            _fmt(e.get("mean_bin_auc")),
        ]
        if synthetic:
            gap = e.get("gap_to_bayes")
            row.append(
                f"{gap['mean']:.2%} ± {gap['std']:.2%}" if gap and gap.get("mean") is not None else "-"
            )
        boot = e.get("bootstrap_vs_" + base) or {}
        row += [
            _fmt_ci(boot.get("pooled_auc")) if boot else _fmt(paired.get("pooled_auc"), signed=True),
            _fmt_ci(boot.get("pooled_logloss")) if boot else _fmt(paired.get("pooled_logloss"), signed=True),
            _fmt(e.get("wall_seconds"), digits=1),
        ]
        lines.append("| " + " | ".join(row) + " |")
    if synthetic:
        any_e = strategies[names[0]]
        lines += ["", f"Bayes-optimal logloss on the same rows: {_fmt(any_e.get('bayes_logloss'))}."]
    return "\n".join(lines) + "\n"


# One colour per strategy in every figure (matplotlib's tab10), whichever strategies a figure shows.
STRATEGY_COLORS = {
    "bce": "#1f77b4",
    "label_smoothing": "#ff7f0e",
    "distill": "#2ca02c",
    "reloop": "#d62728",
    "full_retrain": "#9467bd",
    "lr": "#8c564b",
}
_SPARE_COLORS = ("#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def strategy_color(name: str) -> str:
    """The fixed colour of a strategy (a label like ``reloop#s0`` takes its strategy's colour)."""
    base = name.split("#", 1)[0]
    if base in STRATEGY_COLORS:
        return STRATEGY_COLORS[base]
    return _SPARE_COLORS[sum(base.encode()) % len(_SPARE_COLORS)]


def plots(runs: Sequence[dict[str, Any]], out_dir: Path, *, baseline: str = BASELINE) -> list[Path]:
    """``auc_per_bin.png`` (mean over seeds per strategy) and ``gain_over_<baseline>.png`` (band = ±1 std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[int, dict[int, float]]] = {}
    for run in runs:
        name = run.get("label") or run["strategy"]
        for b in run["bins"]:
            series.setdefault(name, {}).setdefault(int(b["bin"]), {})[int(run["seed"])] = float(b["auc"])
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, bins in series.items():
        ks = sorted(bins)
        ax.plot(
            ks,
            [np.nanmean(list(bins[k].values())) for k in ks],
            marker=".",
            label=name,
            color=strategy_color(name),
        )
    ax.set_xlabel("bin")
    ax.set_ylabel("AUC (mean over seeds)")
    ax.set_title("Per-bin AUC, test-then-train")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "auc_per_bin.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    if baseline in series:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        base = series[baseline]
        for name, bins in series.items():
            if name == baseline:
                continue
            ks = [k for k in sorted(bins) if k in base]
            diffs = [[bins[k][s] - base[k][s] for s in bins[k] if s in base[k]] for k in ks]
            mean = np.array([np.mean(d) if d else np.nan for d in diffs])
            std = np.array([np.std(d, ddof=1) if len(d) > 1 else 0.0 for d in diffs])
            (line,) = ax.plot(ks, mean, marker=".", label=name, color=strategy_color(name))
            ax.fill_between(ks, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xlabel("bin")
        ax.set_ylabel(f"AUC − AUC({baseline}), paired by seed")
        ax.set_title(f"Gain over {baseline} (band: ±1 std across seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"gain_over_{baseline}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _pooled_hours(runs: Sequence[dict[str, Any]]) -> dict[str, tuple[float, float] | None]:
    """Calibration by hour pooled over ``runs`` (their rows together): the model against the observed
    CTR, and the true CTR itself against the observed one, as (worst low hour, worst high hour)."""
    total: dict[str, list[float]] = {}
    for figs in runs:
        for h, row in (figs.get("hour_sums") or {}).items():
            acc = total.setdefault(h, [0.0] * len(row))
            for i, v in enumerate(row):
                acc[i] += v
    model = [r[1] / r[2] for r in total.values() if r[2] > 0]
    oracle = [r[3] / r[2] for r in total.values() if r[2] > 0 and len(r) > 3]
    return {
        "model": (min(model), max(model)) if model else None,
        "oracle": (min(oracle), max(oracle)) if oracle else None,
    }


def across_worlds(worlds: dict[int, dict[str, Any]], *, order: Sequence[str]) -> str:
    """One table over several simulated worlds: gap to Bayes and the served calibration's worst hours.

    Each gap cell is the mean over that world's seeds. Calibration by hour is given three ways: the
    worst hour of any one world, the worst hour with the worlds' rows pooled, and, for scale, the
    simulator's true CTR itself against the observed CTR of the same rows pooled over the worlds:
    an hour's observed CTR carries label noise, so even the Bayes-optimal model strays from 1 by that.
    """
    names = [n for n in order if any(n in w["strategies"] for w in worlds.values())]
    head = [
        "strategy",
        *[f"gap to Bayes, world {d}" for d in worlds],
        "mean gap",
        "calibration by hour vs observed CTR, worst world (min..max)",
        "pooled over the worlds",
        "true CTR vs observed, pooled (noise floor)",
        "vs true CTR (min..max)",
    ]
    lines = ["### Simulator, several worlds", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in names:
        gaps: list[float] = []
        ranges: dict[str, list[float]] = {k: [] for k in ("lo", "hi", "true_lo", "true_hi")}
        cells = []
        per_seed: dict[str, list[dict[str, Any]]] = {}
        for w in worlds.values():
            e = w["strategies"].get(n) or {}
            g = (e.get("gap_to_bayes") or {}).get("mean")
            cells.append(f"{g:.2%}" if g is not None else "-")
            if g is not None:
                gaps.append(g)
            for seed, figs in (e.get("seeds") or {}).items():
                per_seed.setdefault(seed, []).append(figs)
                for key, lo, hi in (("calibration", "lo", "hi"), ("calibration_true", "true_lo", "true_hi")):
                    if math.isfinite(figs.get(f"{key}_hour_min", float("nan"))):
                        ranges[lo].append(figs[f"{key}_hour_min"])
                        ranges[hi].append(figs[f"{key}_hour_max"])
        mean_gap = f"{np.mean(gaps):.2%}" if gaps else "-"
        cal = [
            f"{min(ranges[lo]):.3f}..{max(ranges[hi]):.3f}" if ranges[lo] else "-"
            for lo, hi in (("lo", "hi"), ("true_lo", "true_hi"))
        ]
        # pooled per training seed (each seed's worlds together), then the worst over seeds
        pooled = [_pooled_hours(runs) for runs in per_seed.values()]
        pooled_cells = []
        for key in ("model", "oracle"):
            found = [r for p in pooled if (r := p[key]) is not None]
            pooled_cells.append(
                f"{min(lo for lo, _ in found):.3f}..{max(hi for _, hi in found):.3f}" if found else "-"
            )
        lines.append("| " + " | ".join([n, *cells, mean_gap, cal[0], *pooled_cells, cal[1]]) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(
    out_dir: Path,
    *,
    title: str,
    runs: Sequence[dict[str, Any]],
    summary: dict[str, Any],
    meta: dict[str, Any],
    order: Sequence[str] | None = None,
) -> dict[str, Path]:
    """``results.json`` (every per-bin figure + summary + meta), ``results.md`` and the plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"meta": {**meta, "machine": machine()}, "summary": summary, "runs": list(runs)}
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(_clean(payload), indent=2, sort_keys=True, default=str))
    md = markdown(summary, title=title, order=order)
    md_path = out_dir / "results.md"
    md_path.write_text(md)
    pngs = plots(runs, out_dir)
    return {"json": json_path, "markdown": md_path, **{p.stem: p for p in pngs}}


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value
