"""Self-describing checkpoints: everything needed to rebuild, serve or warm-start a model.

A checkpoint carries the model name and arguments, weights, both optimizers' states, the feature spec
(with its frozen numeric statistics), the loss and its parameters, the seed, the data watermark
(first and last day trained), the training config and the evaluation metrics. It loads without the
config that produced it. The bytes are ``torch.save`` of plain containers, tensors, strings and
numbers only, so ``checkpoint_from_bytes`` loads with ``weights_only=True`` (no pickle code runs).
"""

from __future__ import annotations

import io
import mmap
from dataclasses import dataclass, field, fields
from datetime import date
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import torch

from reloop_service.data.spec import FeatureSpec
from reloop_service.training.layers import gather_rows, scatter_rows

if TYPE_CHECKING:
    from reloop_service.training.models import CTRModel

CHECKPOINT_FORMAT: Final = "reloop-checkpoint"
#: Version 2: embeddings in one fused table per model (``embedding.table.weight``), sparse optimizer
#: state with one step per table. Version 1 (one table per field, per-row steps) still loads: the
#: tables and their optimizer state are concatenated in field order on load (see docs/architecture.md).
#: Version 3: tables and optimizer state mostly made of rows training never touched are stored as
#: their nonzero rows only (``_pack_rows``); versions 1 and 2 store every tensor dense and still load.
CHECKPOINT_VERSION: Final = 3
READABLE_VERSIONS: Final = frozenset({1, 2, 3})

SPARSE_MIN_ROWS: Final = 4096
"""A 2-D tensor with at least this many rows, at most half of them nonzero, is stored by its rows."""

_ROWS_MARKER: Final = "reloop_nonzero_rows"


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


_DATE_FIELDS: Final = ("first_day", "last_day")  # stored as ISO strings (weights_only loads no dates)
_PACKED_FIELDS: Final = ("state_dict", "optimizer_state")  # where tables and their moments live


# A zstd-compressed checkpoint: this magic, the torch.save size (8 bytes, little endian), the frame.
# Embedding tables are mostly rows training never touched (zeros): the demo model's 69 MB compress to
# about 2.3 MB in ~30 ms, which made writing and reading the artifact most of an hourly cycle's cost.
_COMPRESSED = b"RLCKZST1"


def _pack_rows(value: Any) -> Any:
    """``value`` with every mostly-zero table replaced by its nonzero rows (recursing into containers).

    An embedding table, and its optimizer state, holds a row per hashed value the model could ever
    see; training touches a few percent of them (7,013 of the demo model's 552,960 rows after a day).
    Writing the dense tensors copied, compressed and, on load, decompressed and copied every untouched
    row again: 122-134 and 103 ms of CPU per checkpoint for the demo model (41-53 and 19-20 packed;
    ``scripts/checkpoint_ab.py``), most of an hourly cycle's fixed cost. A packed tensor is
    ``{_ROWS_MARKER: ids int64 [K], "values": [K, D], "shape": [N, D]}``.
    """
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        if tensor.dim() == 2 and tensor.shape[0] >= SPARSE_MIN_ROWS and tensor.is_floating_point():
            ids = torch.nonzero(tensor.any(dim=1)).reshape(-1)
            if 2 * ids.numel() <= tensor.shape[0]:
                return {_ROWS_MARKER: ids, "values": gather_rows(tensor, ids), "shape": list(tensor.shape)}
        return tensor
    if isinstance(value, dict):
        return {k: _pack_rows(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_pack_rows(v) for v in value)
    return value


def _mapped_zeros(rows: int, cols: int) -> torch.Tensor:
    """Float32 zeros [rows, cols] in anonymous memory that the OS maps page by page when written.

    Not ``np.zeros``: NumPy asks for huge pages on large arrays, and then scattering a checkpoint's
    rows zero-fills every 2 MB page they land on; loading the demo checkpoint while three others were
    alive took ~225 ms of CPU that way, ~20 ms this way. (A table trained in place keeps NumPy's huge
    pages: its row-sparse steps ran 27% slower on 4 KB pages, docs/benchmarks.md.)
    """
    buffer = mmap.mmap(-1, max(rows * cols * 4, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return torch.from_numpy(np.frombuffer(buffer, dtype=np.float32, count=rows * cols).reshape(rows, cols))


def _unpack_rows(value: Any) -> Any:
    """Inverse of ``_pack_rows``: packed tables become dense again, their untouched rows zero.

    Float32 tables start as ``_mapped_zeros``: pages of rows nobody touched are not even mapped until
    training writes them.
    """
    if isinstance(value, dict):
        if _ROWS_MARKER in value:
            ids, values, shape = value[_ROWS_MARKER], value["values"], value["shape"]
            if values.dtype == torch.float32 and len(shape) == 2:
                dense = _mapped_zeros(int(shape[0]), int(shape[1]))
            else:
                dense = torch.zeros(tuple(shape), dtype=values.dtype)
            if ids.shape[0] != values.shape[0] or values.shape[1:] != dense.shape[1:]:
                raise ValueError(f"{ids.shape[0]} row ids for {list(values.shape)} values of a {shape} table")
            scatter_rows(dense, ids, values)  # one memcpy a row (torch's index_put: ~18x slower here)
            return dense
        return {k: _unpack_rows(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_unpack_rows(v) for v in value)
    return value


def checkpoint_to_bytes(
    checkpoint: Checkpoint, *, compress: bool = False, version: int = CHECKPOINT_VERSION
) -> bytes:
    """Serialize with ``torch.save``: the marker, then every ``Checkpoint`` field by its own name.

    ``compress`` wraps the bytes in one zstd frame (the cycle's artifacts); ``checkpoint_from_bytes``
    reads both forms. ``version`` 2 writes every tensor dense, as builds before version 3 did (for
    tests of older checkpoints and for readers that predate it).
    """
    if version not in (2, CHECKPOINT_VERSION):
        raise ValueError(f"can write checkpoint versions 2 and {CHECKPOINT_VERSION}, not {version!r}")
    payload: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "version": version}
    for f in fields(Checkpoint):
        value = getattr(checkpoint, f.name)
        if f.name == "state_dict":
            value = {k: v.detach().cpu() for k, v in value.items()}
        elif f.name in _DATE_FIELDS:
            value = value.isoformat() if value else None
        if version >= 3 and f.name in _PACKED_FIELDS:
            value = _pack_rows(value)
        payload[f.name] = value
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    raw = buffer.getvalue()
    if not compress:
        return raw
    import pyarrow as pa

    frame = pa.compress(raw, codec="zstd", asbytes=True)
    return _COMPRESSED + len(raw).to_bytes(8, "little") + frame


def checkpoint_from_bytes(data: bytes) -> Checkpoint:
    """Inverse of ``checkpoint_to_bytes``; ``CheckpointError`` for anything that is not one."""
    if data[: len(_COMPRESSED)] == _COMPRESSED:
        import pyarrow as pa

        size = int.from_bytes(data[len(_COMPRESSED) : len(_COMPRESSED) + 8], "little")
        try:
            data = pa.decompress(
                data[len(_COMPRESSED) + 8 :], decompressed_size=size, codec="zstd", asbytes=True
            )
        except Exception as exc:  # a truncated or corrupt frame
            raise CheckpointError(f"not a readable checkpoint: compressed frame: {exc}") from exc
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
    values: dict[str, Any] = {}
    for f in fields(Checkpoint):
        if f.name not in payload:
            raise CheckpointError(f"checkpoint is missing field {f.name!r}")
        value = payload[f.name]
        if f.name in _DATE_FIELDS:
            value = date.fromisoformat(value) if value else None
        elif f.name in _PACKED_FIELDS and payload["version"] >= 3:
            try:
                value = _unpack_rows(value)
            except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
                raise CheckpointError(f"not a readable checkpoint: field {f.name!r}: {exc}") from exc
        values[f.name] = value
    return Checkpoint(**values)


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
