"""Batched inference from a checkpoint: serving, prior recompute and the quality gate all call this.

The features go through ``data.transforms.transform``, the same function training uses, so a row is
encoded identically wherever it is scored. Large inputs are scored in slices of ``batch_size`` rows
to bound memory; the model stays in eval mode under ``torch.inference_mode``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from reloop_service.data.transforms import FeatureBatch, labels_of, transform, transform_records
from reloop_service.training.checkpoint import Checkpoint
from reloop_service.training.evaluation import evaluate
from reloop_service.training.models import CTRModel

DEFAULT_PREDICT_BATCH = 65536


class Predictor:
    """Scores record batches with one checkpoint's model."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        *,
        batch_size: int = DEFAULT_PREDICT_BATCH,
        model: CTRModel | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.checkpoint = checkpoint
        self.spec = checkpoint.feature_spec()
        self.batch_size = batch_size
        self.model = model if model is not None else checkpoint.build_model()
        self.model.eval()

    @property
    def version(self) -> dict[str, Any]:
        """The checkpoint's metadata (model, loss, watermark, spec fingerprint, metrics)."""
        return self.checkpoint.describe()

    def predict_batch(self, batch: pa.RecordBatch | pa.Table) -> np.ndarray:
        """Predicted CTR per row, float64 [N]."""
        out = np.empty(batch.num_rows, dtype=np.float64)
        was_training = self.model.training
        if was_training:  # only a model shared with a trainer; mode switches walk every module
            self.model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, batch.num_rows, self.batch_size):
                    part = batch.slice(start, self.batch_size)
                    logits = self.model(transform(self.spec, part))
                    out[start : start + part.num_rows] = torch.sigmoid(logits).double().numpy()
        finally:
            if was_training:
                self.model.train()
        return out

    def predict_records(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Predicted CTR for feature dicts (serving's request rows), float64 [N]."""
        if not records:
            return np.empty(0, dtype=np.float64)
        if len(records) <= self.batch_size:
            return self.predict_features(transform_records(self.spec, records)[0])
        parts = [
            self.predict_features(transform_records(self.spec, records[start : start + self.batch_size])[0])
            for start in range(0, len(records), self.batch_size)
        ]
        return np.concatenate(parts)

    def predict_features(self, features: FeatureBatch) -> np.ndarray:
        """Predicted CTR for an encoded batch (``transform`` / ``transform_records`` output), float64 [N].

        Serving's path: requests are at most a few thousand rows, so one forward, no slicing.
        """
        was_training = self.model.training
        if was_training:  # only a model shared with a trainer; mode switches walk every module
            self.model.eval()
        try:
            with torch.inference_mode():
                return torch.sigmoid(self.model(features)).double().numpy()
        finally:
            if was_training:
                self.model.train()


def evaluate_checkpoint(
    checkpoint: Checkpoint,
    batches: Iterable[pa.RecordBatch | pa.Table],
    *,
    model: CTRModel | None = None,
) -> dict[str, Any]:
    """AUC, logloss, calibration (and mean prediction, CTR, rows) of ``checkpoint`` on ``batches``."""
    predictor = Predictor(checkpoint, model=model)
    ys: list[np.ndarray] = []
    ps: list[np.ndarray] = []
    for batch in batches:
        if batch.num_rows == 0:
            continue
        ys.append(labels_of(predictor.spec, batch).double().numpy())
        ps.append(predictor.predict_batch(batch))
    if not ys:
        raise ValueError("no evaluation rows")
    return evaluate(np.concatenate(ys), np.concatenate(ps))
