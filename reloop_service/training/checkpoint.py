"""Self-describing checkpoints: everything needed to rebuild, serve or warm-start a model.

A checkpoint carries the model name and arguments, weights, both optimizers' states, the feature spec
(with its frozen numeric statistics), the loss and its parameters, the seed, the data watermark
(first and last day trained), the training config and the evaluation metrics. It loads without the
config that produced it. The bytes are ``torch.save`` of plain containers, tensors, strings and
numbers only, so ``checkpoint_from_bytes`` loads with ``weights_only=True`` (no pickle code runs).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any, Final

import torch

from reloop_service.data.spec import FeatureSpec

if TYPE_CHECKING:
    from reloop_service.training.models import CTRModel

CHECKPOINT_FORMAT: Final = "reloop-checkpoint"
#: Version 2: embeddings in one fused table per model (``embedding.table.weight``), sparse optimizer
#: state with one step per table. Version 1 (one table per field, per-row steps) still loads: the
#: tables and their optimizer state are concatenated in field order on load (see docs/architecture.md).
CHECKPOINT_VERSION: Final = 2
READABLE_VERSIONS: Final = frozenset({1, 2})


class CheckpointError(ValueError):
    """The bytes are not a readable reloop checkpoint (the message says why)."""


@dataclass
class Checkpoint:
    """One trained model version with everything that describes it."""

    model_name: str
    model_args: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    spec: dict[str, Any]
    loss: str
    loss_params: dict[str, float]
    seed: int
    first_day: date | None = None
    last_day: date | None = None
    optimizer_state: dict[str, Any] = field(default_factory=dict)
    train_config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def feature_spec(self) -> FeatureSpec:
        """The feature spec the model was trained with (numeric statistics included)."""
        return FeatureSpec.from_dict(self.spec)

    def build_model(self) -> CTRModel:
        """Rebuild the model with its trained weights, in eval mode."""
        from reloop_service.training.layers import skip_table_init
        from reloop_service.training.models import build_model

        with skip_table_init():  # every table row is overwritten by the load below
            model = build_model(self.model_name, self.feature_spec(), **self.model_args)
        model.load_state_dict(self.state_dict)
        return model.eval()

    def describe(self) -> dict[str, Any]:
        """Metadata without tensors (for logs, the registry and ``reloop versions``)."""
        return {
            "model": self.model_name,
            "model_args": self.model_args,
            "loss": self.loss,
            "loss_params": self.loss_params,
            "seed": self.seed,
            "first_day": self.first_day.isoformat() if self.first_day else None,
            "last_day": self.last_day.isoformat() if self.last_day else None,
            "spec_fingerprint": self.feature_spec().fingerprint(),
            "train_config": self.train_config,
            "metrics": self.metrics,
        }


def checkpoint_to_bytes(checkpoint: Checkpoint) -> bytes:
    """Serialize with ``torch.save``; dates become ISO strings so loading needs no custom classes."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_name": checkpoint.model_name,
        "model_args": checkpoint.model_args,
        "state_dict": {k: v.detach().cpu() for k, v in checkpoint.state_dict.items()},
        "spec": checkpoint.spec,
        "loss": checkpoint.loss,
        "loss_params": checkpoint.loss_params,
        "seed": checkpoint.seed,
        "first_day": checkpoint.first_day.isoformat() if checkpoint.first_day else None,
        "last_day": checkpoint.last_day.isoformat() if checkpoint.last_day else None,
        "optimizer_state": checkpoint.optimizer_state,
        "train_config": checkpoint.train_config,
        "metrics": checkpoint.metrics,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def checkpoint_from_bytes(data: bytes) -> Checkpoint:
    """Inverse of ``checkpoint_to_bytes``; ``CheckpointError`` for anything that is not one."""
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt input
        raise CheckpointError(f"not a readable checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError("not a reloop checkpoint (missing format marker)")
    if payload.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"unsupported checkpoint version {payload.get('version')!r} "
            f"(this build reads versions {', '.join(map(str, sorted(READABLE_VERSIONS)))})"
        )
    try:
        return Checkpoint(
            model_name=payload["model_name"],
            model_args=payload["model_args"],
            state_dict=payload["state_dict"],
            spec=payload["spec"],
            loss=payload["loss"],
            loss_params=payload["loss_params"],
            seed=payload["seed"],
            first_day=date.fromisoformat(payload["first_day"]) if payload["first_day"] else None,
            last_day=date.fromisoformat(payload["last_day"]) if payload["last_day"] else None,
            optimizer_state=payload["optimizer_state"],
            train_config=payload["train_config"],
            metrics=payload["metrics"],
        )
    except KeyError as exc:
        raise CheckpointError(f"checkpoint is missing field {exc}") from None


def save_checkpoint(
    checkpoint: Checkpoint, path: str, *, storage_options: dict[str, Any] | None = None
) -> None:
    """Write a checkpoint to a local path or fsspec URI atomically."""
    from reloop_service.storage import filesystem, write_atomic

    fs, fs_path = filesystem(path, storage_options)
    write_atomic(fs, fs_path, checkpoint_to_bytes(checkpoint))


def load_checkpoint(path: str, *, storage_options: dict[str, Any] | None = None) -> Checkpoint:
    """Read a checkpoint from a local path or fsspec URI; errors name the path."""
    from reloop_service.storage import filesystem

    fs, fs_path = filesystem(path, storage_options)
    try:
        with fs.open(fs_path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc}") from exc
    try:
        return checkpoint_from_bytes(data)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
