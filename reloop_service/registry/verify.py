"""Check that a version's artifact can really be served before production points at it.

The sha256 check alone is not enough (an artifact written by a broken trainer hashes fine), and a real load
alone is not enough either (flipped bytes inside a tensor still load). So ``load_version`` does both:
the artifact store verifies size and sha256 against the registry row, then the checkpoint is decoded,
the model rebuilt and one warm-up prediction must be a finite number. Promote and rollback call it first and
answer ``ArtifactUnusableError`` (422, with the reason) instead of moving the alias; the serving replica's
loader calls the same function, so what the registry accepts is what a replica can load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from reloop_service.registry.artifacts import ArtifactStore
from reloop_service.registry.entities import ModelVersion
from reloop_service.registry.errors import (
    ArtifactIntegrityError,
    ArtifactMissingError,
    ArtifactUnusableError,
)

if TYPE_CHECKING:
    from reloop_service.training.predict import Predictor


def load_version(artifacts: ArtifactStore, version: ModelVersion) -> Predictor:
    """The version's model, loaded and warmed; ``ArtifactUnusableError`` naming what is wrong otherwise."""
    from reloop_service.training.checkpoint import CheckpointError, checkpoint_from_bytes
    from reloop_service.training.predict import Predictor

    number = version.version
    try:
        data = artifacts.get(version.artifact)
    except ArtifactMissingError as exc:
        raise _unusable(number, "artifact missing", exc) from exc
    except ArtifactIntegrityError as exc:
        raise _unusable(number, "artifact checksum mismatch", exc) from exc
    except OSError as exc:
        raise _unusable(number, "artifact unreadable", exc) from exc
    try:
        predictor = Predictor(checkpoint_from_bytes(data))
    except CheckpointError as exc:
        raise _unusable(number, "checkpoint unreadable", exc) from exc
    except Exception as exc:  # a checkpoint whose weights do not fit its model arguments, etc.
        raise _unusable(number, "model does not load", exc) from exc
    try:
        warm = np.asarray(predictor.predict_records([{}]), dtype=np.float64)
    except Exception as exc:
        raise _unusable(number, "warm-up prediction failed", exc) from exc
    if warm.shape != (1,) or not np.isfinite(warm).all():
        raise _unusable(number, "warm-up prediction is not a finite number", ValueError(repr(warm)))
    return predictor


def _unusable(version: int, reason: str, exc: BaseException) -> ArtifactUnusableError:
    return ArtifactUnusableError(
        f"version {version} cannot be served: {reason}: {exc}", version=version, reason=reason
    )
