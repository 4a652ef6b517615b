"""Metrics against brute-force definitions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from reloop_service.training.evaluation import auc, calibration, evaluate, logloss


def auc_pairwise(y: np.ndarray, p: np.ndarray) -> float:
    """The definition: P(score of a positive > score of a negative), ties count one half."""
    pos = p[y == 1]
    neg = p[y == 0]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_matches_pairwise_definition_with_many_ties() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        y = rng.integers(0, 2, 60).astype(float)
        y[:2] = [0, 1]
        p = rng.integers(0, 5, 60) / 5.0  # heavy ties
        assert auc(y, p) == pytest.approx(auc_pairwise(y, p), abs=1e-12)


def test_auc_extremes() -> None:
    y = np.array([0, 0, 1, 1])
    assert auc(y, [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auc(y, [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert auc(y, [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert math.isnan(auc([1, 1], [0.2, 0.3]))


def test_auc_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        auc([0, 1], [0.5])
    with pytest.raises(ValueError, match="0 or 1"):
        auc([0, 2], [0.1, 0.2])


def test_logloss_and_clipping() -> None:
    assert logloss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert logloss([1], [0.0]) == pytest.approx(-math.log(1e-7))


def test_calibration_and_evaluate() -> None:
    y = np.array([1, 0, 0, 0])
    p = np.array([0.5, 0.1, 0.1, 0.3])
    assert calibration(y, p) == pytest.approx(0.25 / 0.25)
    assert math.isnan(calibration([0, 0], [0.1, 0.2]))
    report = evaluate(y, p)
    assert report["rows"] == 4
    assert report["ctr"] == 0.25
    assert report["mean_pred"] == pytest.approx(0.25)
    assert report["auc"] == 1.0
