"""Hyper-parameter selection (replay/selection.py): which variant wins, what is written and read back."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from reloop_service.replay.runner import StrategyConfig
from reloop_service.replay.selection import STAGE1, _best, load_params, selection_markdown, stage2


def row(strategy: str, auc: float, logloss: float, **cfg: object) -> dict[str, object]:
    config = asdict(StrategyConfig(**cfg))  # type: ignore[arg-type]
    return {
        "label": f"{strategy}-{auc}",
        "strategy": strategy,
        "config": config,
        "pooled_auc": auc,
        "pooled_logloss": logloss,
    }


def test_best_is_the_highest_pooled_auc_of_its_strategy() -> None:
    rows = [row("bce", 0.71, 0.40, lr=1e-3), row("bce", 0.73, 0.45, lr=3e-3), row("reloop", 0.90, 0.10)]
    assert _best(rows, "bce")["config"]["lr"] == 3e-3  # another strategy's better AUC does not count


def test_an_auc_tie_at_four_decimals_goes_to_the_lower_logloss() -> None:
    rows = [row("bce", 0.72001, 0.41, epochs=1), row("bce", 0.71996, 0.39, epochs=2)]
    assert _best(rows, "bce")["config"]["epochs"] == 2
    rows = [row("bce", 0.7210, 0.41, epochs=1), row("bce", 0.7200, 0.39, epochs=2)]
    assert _best(rows, "bce")["config"]["epochs"] == 1  # a real AUC difference beats logloss


def test_stage2_varies_only_the_strategys_own_knobs_around_the_stage1_winner() -> None:
    base = StrategyConfig(lr=3e-3, epochs=2)
    assert [c.loss_params["alpha"] for c in stage2("reloop", base)] == [0.02, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9]
    assert all(c.lr == 3e-3 and c.epochs == 2 for c in stage2("reloop", base))
    distill = stage2("distill", base)
    assert len(distill) == 6 and {(c.loss_params["beta"], c.loss_params["temperature"]) for c in distill} == {
        (b, t) for b in (0.25, 0.5, 0.75) for t in (1.0, 2.0)
    }
    assert [c.epochs for c in stage2("full_retrain", base)] == [1, 2, 3]
    assert {(c.lr, c.sparse_lr) for c in stage2("lr", base)} == {(1e-2, 5e-2), (1e-2, 1e-1)}
    assert stage2("bce", base) == [base]
    assert len(STAGE1) == 4 and len(set(STAGE1)) == 4


def test_the_chosen_settings_round_trip_through_selection_json(tmp_path: Path) -> None:
    rows = [
        row("bce", 0.72, 0.40, lr=3e-3, epochs=2),
        row("reloop", 0.74, 0.39, lr=3e-3, loss_params={"alpha": 0.3}),
    ]
    chosen = {s: _best(rows, s)["config"] for s in ("bce", "reloop")}
    result = {"data": "toy", "bins": [4, 10], "seeds": [0, 1], "chosen": chosen, "variants": rows}
    path = tmp_path / "selection.json"
    path.write_text(json.dumps(result))
    params = load_params(path)
    assert params["reloop"] == StrategyConfig(lr=3e-3, loss_params={"alpha": 0.3})
    assert params["bce"] == StrategyConfig(lr=3e-3, epochs=2)

    markdown = selection_markdown(result)
    chosen_lines = [line for line in markdown.splitlines() if line.endswith("**yes** |")]
    assert len(chosen_lines) == 2 and any('{"alpha": 0.3}' in line for line in chosen_lines)
    assert "Selection on bins 4..10 (toy, seeds [0, 1])" in markdown


def test_a_selection_without_choices_gives_no_params(tmp_path: Path) -> None:
    path = tmp_path / "selection.json"
    path.write_text(json.dumps({"data": "toy"}))
    assert load_params(path) == {}
