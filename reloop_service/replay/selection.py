"""Hyper-parameter selection on the selection bins only (ml100k-weekly: bins 4..10).

Two small stages, each scored by pooled AUC over the selection bins (mean over seeds; ties by
logloss): (1) learning rate x epochs per cycle on ``bce``, the plain incremental model; (2) with
those, each loss's own parameters (ε, β x τ, α), ``full_retrain``'s epochs and the LR model's
learning rate. The winners are written to ``selection.json`` and passed to the report run with
``--params``, the same values for every seed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from reloop_service.replay.runner import (
    ReplayConfig,
    ReplayData,
    RunSpec,
    SplitProtocol,
    StrategyConfig,
    run_many,
)
from reloop_service.replay.summary import run_figures

STAGE1 = [(lr, epochs) for lr in (1e-3, 3e-3) for epochs in (1, 2)]
# ReLoop's α: the small values too, where the service's default (0.02, chosen on the simulator's
# selection worlds) lies, so that ml100k's own selection can confirm or contradict it.
ALPHAS = (0.02, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9)


def stage2(strategy: str, base: StrategyConfig) -> list[StrategyConfig]:
    """The candidate settings of ``strategy`` around the stage-1 winner ``base``."""
    if strategy == "label_smoothing":
        return [replace(base, loss_params={"epsilon": e}) for e in (0.05, 0.1, 0.2)]
    if strategy == "distill":
        return [
            replace(base, loss_params={"beta": b, "temperature": t})
            for b in (0.25, 0.5, 0.75)
            for t in (1.0, 2.0)
        ]
    if strategy == "reloop":
        return [replace(base, loss_params={"alpha": a}) for a in ALPHAS]
    if strategy == "full_retrain":
        return [replace(base, epochs=e) for e in (1, 2, 3)]
    if strategy == "lr":
        return [replace(base, lr=lr, sparse_lr=s) for lr, s in ((1e-2, 5e-2), (1e-2, 1e-1))]
    return [base]


def _score(
    data: ReplayData,
    variants: Sequence[tuple[str, str, StrategyConfig]],
    *,
    config: ReplayConfig,
    protocol: SplitProtocol,
    seeds: Sequence[int],
    out_dir: Path,
    workers: int,
) -> list[dict[str, Any]]:
    runs = [
        RunSpec(
            strategy=strategy,
            seed=seed,
            config=config.with_strategy(strategy, cfg),
            workdir=out_dir / "work" / f"{label}-s{seed}",
            predictions_path=out_dir / "predictions" / f"{label}-s{seed}.parquet",
            label=f"{label}#s{seed}",
        )
        for label, strategy, cfg in variants
        for seed in seeds
    ]
    results = run_many(data, runs, protocol=protocol, workers=workers)
    rows = []
    for label, strategy, cfg in variants:
        figs = [
            run_figures(r["predictions"], bins_from=protocol.select_from, bins_to=protocol.select_to)
            for r in results
            if r["label"].split("#")[0] == label
        ]
        rows.append(
            {
                "label": label,
                "strategy": strategy,
                "config": asdict(cfg),
                "pooled_auc": sum(f["pooled_auc"] for f in figs) / len(figs),
                "pooled_logloss": sum(f["pooled_logloss"] for f in figs) / len(figs),
            }
        )
    return rows


def _best(rows: Sequence[dict[str, Any]], strategy: str) -> dict[str, Any]:
    mine = [r for r in rows if r["strategy"] == strategy]
    return max(mine, key=lambda r: (round(r["pooled_auc"], 4), -r["pooled_logloss"]))


def select(
    data: ReplayData,
    *,
    strategies: Sequence[str],
    config: ReplayConfig,
    protocol: SplitProtocol,
    seeds: Sequence[int],
    out_dir: Path,
    workers: int = 1,
) -> dict[str, Any]:
    """Run both stages on bins ``select_from..select_to`` and return (and write) the chosen settings."""
    sel_protocol = replace(protocol, last_bin=protocol.select_to)
    v1 = [(f"bce-lr{lr:g}-ep{ep}", "bce", replace(config.default, lr=lr, epochs=ep)) for lr, ep in STAGE1]
    rows = _score(
        data, v1, config=config, protocol=sel_protocol, seeds=seeds, out_dir=out_dir, workers=workers
    )
    best = _best(rows, "bce")
    base = StrategyConfig(**best["config"])
    v2: list[tuple[str, str, StrategyConfig]] = []
    for strategy in strategies:
        if strategy == "bce":
            continue
        for i, cfg in enumerate(stage2(strategy, base)):
            v2.append((f"{strategy}-{i}", strategy, cfg))
    if v2:
        rows += _score(
            data, v2, config=config, protocol=sel_protocol, seeds=seeds, out_dir=out_dir, workers=workers
        )
    chosen = {s: _best(rows, s)["config"] for s in strategies if any(r["strategy"] == s for r in rows)}
    result = {
        "data": data.name,
        "bins": [protocol.select_from, protocol.select_to],
        "seeds": list(seeds),
        "criterion": "pooled AUC over the selection bins, mean over seeds (ties: lower logloss)",
        "model": config.to_dict(),
        "chosen": chosen,
        "variants": rows,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "selection.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    (out_dir / "selection.md").write_text(selection_markdown(result))
    return result


def selection_markdown(result: dict[str, Any]) -> str:
    """Every variant tried, with the chosen one per strategy marked."""
    lines = [
        f"### Selection on bins {result['bins'][0]}..{result['bins'][1]} "
        f"({result['data']}, seeds {result['seeds']})",
        "",
        "| strategy | lr | sparse lr | epochs | loss params | pooled AUC | pooled logloss | chosen |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["variants"]:
        c = r["config"]
        chosen = result["chosen"].get(r["strategy"]) == c
        lines.append(
            f"| {r['strategy']} | {c['lr']:g} | {c['sparse_lr']:g} | {c['epochs']} | "
            f"{json.dumps(c['loss_params']) if c['loss_params'] else '-'} | {r['pooled_auc']:.4f} | "
            f"{r['pooled_logloss']:.4f} | {'**yes**' if chosen else ''} |"
        )
    return "\n".join(lines) + "\n"


def load_params(path: Path) -> dict[str, StrategyConfig]:
    """The ``chosen`` settings of a ``selection.json``."""
    data = json.loads(Path(path).read_text())
    return {k: StrategyConfig(**v) for k, v in data.get("chosen", {}).items()}
