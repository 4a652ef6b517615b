"""The one train/holdout split of a day, used by the cycle, ``reloop train`` and the replay.

A row is held out when a salted stable hash of its impression id falls below ``fraction``. Not by
event time: a time split always holds out the same late hours, so their embeddings (the hour-23
row of an ``hour`` field) would never learn, and the gate would judge every model on the hours it
knows least. A hash split is a uniform sample of the day, identical on every machine and rerun, and
independent of the feature buckets (the salt and a 64-bit finalizer decorrelate it from
``hash % buckets``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from reloop_service.data.transforms import stable_hash

_SALT = np.uint64(0x5EED_0F_4E_10_0B)  # arbitrary, fixed forever: changing it moves every split
_UNIT = float(2**53)


def _mix(h: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer: every output bit depends on every input bit."""
    with np.errstate(over="ignore"):
        z = h ^ _SALT
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def holdout_mask(impression_ids: pa.Array | pa.ChunkedArray, fraction: float) -> np.ndarray:
    """Bool [N]: True for the rows of the holdout (about ``fraction`` of them, fixed per id)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    n = len(impression_ids)
    if fraction == 0.0 or n == 0:
        return np.zeros(n, dtype=bool)
    unit = (_mix(stable_hash(impression_ids)) >> np.uint64(11)).astype(np.float64) / _UNIT
    return unit < fraction
