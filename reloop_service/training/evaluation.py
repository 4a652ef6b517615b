"""Offline metrics on numpy arrays: exact AUC (ties averaged), clipped logloss, calibration.

Plain numpy so the gate, the trainer and the benchmarks compute the same numbers on any host;
AUC is one sort (O(n log n)), a fraction of a second for 10^6 rows.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

#: Probabilities are clipped into [LOGLOSS_EPS, 1 - LOGLOSS_EPS] so one confident miss stays finite.
LOGLOSS_EPS: Final = 1e-7


def _as_arrays(y: npt.ArrayLike, p: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validated 1-d float64 copies of labels and predictions of equal length."""
    ya = np.asarray(y, dtype=np.float64).reshape(-1)
    pa_ = np.asarray(p, dtype=np.float64).reshape(-1)
    if ya.shape != pa_.shape:
        raise ValueError(f"labels ({ya.shape[0]}) and predictions ({pa_.shape[0]}) differ in length")
    if ya.size and not ((ya == 0.0) | (ya == 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    if np.isnan(pa_).any():
        raise ValueError("predictions contain NaN")
    return ya, pa_


def auc(y: npt.ArrayLike, p: npt.ArrayLike) -> float:
    """Exact ROC AUC (Mann-Whitney U); tied scores count one half. NaN if only one class is present."""
    return _auc(*_as_arrays(y, p))


def _auc(ya: np.ndarray, pa_: np.ndarray) -> float:
    n_pos = float(ya.sum())
    n_neg = float(ya.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(pa_, kind="mergesort")
    sorted_p = pa_[order]
    # Average 1-based rank of every tie group: (first + last) / 2 + 1.
    starts = np.flatnonzero(np.r_[True, sorted_p[1:] != sorted_p[:-1]])
    ends = np.r_[starts[1:], sorted_p.size] - 1
    group_rank = (starts + ends) / 2.0 + 1.0
    ranks = np.repeat(group_rank, ends - starts + 1)
    pos_rank_sum = float(ranks[ya[order] == 1.0].sum())
    return (pos_rank_sum - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)


def logloss(y: npt.ArrayLike, p: npt.ArrayLike) -> float:
    """Mean binary cross-entropy with predictions clipped to [1e-7, 1 - 1e-7]."""
    return _logloss(*_as_arrays(y, p))


def _logloss(ya: np.ndarray, pa_: np.ndarray) -> float:
    if ya.size == 0:
        return float("nan")
    pc = np.clip(pa_, LOGLOSS_EPS, 1.0 - LOGLOSS_EPS)
    return float(-np.mean(ya * np.log(pc) + (1.0 - ya) * np.log1p(-pc)))


def calibration(y: npt.ArrayLike, p: npt.ArrayLike) -> float:
    """Mean predicted CTR over observed CTR (1.0 is perfect; NaN when there are no clicks)."""
    return _calibration(*_as_arrays(y, p))


def _calibration(ya: np.ndarray, pa_: np.ndarray) -> float:
    observed = float(ya.mean()) if ya.size else 0.0
    if observed == 0.0:
        return float("nan")
    return float(pa_.mean()) / observed


def evaluate(y: npt.ArrayLike, p: npt.ArrayLike) -> dict[str, Any]:
    """All offline metrics at once: auc, logloss, calibration, mean_pred, ctr, rows."""
    ya, pa_ = _as_arrays(y, p)
    return {
        "auc": _auc(ya, pa_),
        "logloss": _logloss(ya, pa_),
        "calibration": _calibration(ya, pa_),
        "mean_pred": float(pa_.mean()) if pa_.size else float("nan"),
        "ctr": float(ya.mean()) if ya.size else float("nan"),
        "rows": int(ya.size),
    }
