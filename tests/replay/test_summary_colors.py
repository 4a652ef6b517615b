"""Replay figures: a strategy keeps its colour in every figure (real matplotlib PNGs, read back)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def test_a_strategy_has_one_colour_in_every_figure(tmp_path: Path) -> None:
    """The gain figure leaves out the baseline; its lines must not take the baseline's colour."""
    from matplotlib.image import imread

    from reloop_service.replay.summary import STRATEGY_COLORS, plots

    runs = [
        {
            "strategy": s,
            "seed": seed,
            "bins": [{"bin": b, "auc": 0.6 + 0.01 * b + 0.02 * i} for b in range(4)],
        }
        for i, s in enumerate(("bce", "reloop"))
        for seed in (0, 1)
    ]
    auc_png, gain_png = plots(runs, tmp_path)

    def has(path: Path, hex_color: str) -> bool:
        rgb = np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)]) / 255.0
        pixels = imread(path)[..., :3]
        return bool((np.abs(pixels - rgb).max(axis=-1) < 0.02).sum() > 50)

    assert has(auc_png, STRATEGY_COLORS["bce"]) and has(auc_png, STRATEGY_COLORS["reloop"])
    assert has(gain_png, STRATEGY_COLORS["reloop"]) and not has(gain_png, STRATEGY_COLORS["bce"])
    assert len(set(STRATEGY_COLORS.values())) == len(STRATEGY_COLORS)
