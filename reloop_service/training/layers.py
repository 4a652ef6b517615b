"""Small building blocks of the CTR models (FuxiCTR-style), with tensor shapes in their docstrings.

B = batch size, F = number of embedded fields, D = embedding dimension, L = multi-value length.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Standard deviation of the initial embedding rows (small, so untrained rows barely move the logit).
EMBEDDING_INIT_STD = 0.01

_SKIP_TABLE_INIT: contextvars.ContextVar[bool] = contextvars.ContextVar("skip_table_init", default=False)


@contextlib.contextmanager
def skip_table_init() -> Iterator[None]:
    """Build embedding tables uninitialized (``torch.empty``): for models whose weights are loaded next.

    Drawing 2^23 x 16 normal values costs ~0.85 s of CPU; a checkpoint load overwrites them anyway.
    """
    token = _SKIP_TABLE_INIT.set(True)
    try:
        yield
    finally:
        _SKIP_TABLE_INIT.reset(token)


def row_view(table: Tensor) -> np.ndarray | None:
    """``table`` [N, D] as a NumPy array of N opaque records (one per row), or None if not possible.

    Gathering and scattering whole rows of a CPU table through such a view (``np.take``, fancy
    assignment) is one memcpy per row; ``index_select``/``index_copy_`` run a TensorIterator per
    row, which measured 3-6x slower on the 2^20-row tables (the row-sparse step is bound by it).
    Shares memory with ``table``: writes through the view change the tensor.
    """
    if table.device.type != "cpu" or table.dim() != 2 or not table.is_contiguous() or table.numel() == 0:
        return None
    row_bytes = table.shape[1] * table.element_size()
    return table.detach().numpy().view(np.dtype((np.void, row_bytes))).reshape(table.shape[0])


def gather_rows(table: Tensor, ids: Tensor) -> Tensor:
    """``table[ids]`` as a new contiguous tensor: table [N, D], ids LongTensor [U] -> [U, D]."""
    view = row_view(table)
    if view is None or ids.device.type != "cpu":
        return table.detach().index_select(0, ids)
    out = torch.empty((ids.shape[0], table.shape[1]), dtype=table.dtype)
    if ids.numel():
        np.take(view, ids.numpy(), out=row_view(out))
    return out


def scatter_rows(table: Tensor, ids: Tensor, rows: Tensor) -> None:
    """``table[ids] = rows`` in place for unique ``ids`` [U]: table [N, D], rows [U, D]."""
    view = row_view(table)
    src = row_view(rows) if rows.dtype == table.dtype else None
    if view is None or src is None or ids.device.type != "cpu" or rows.shape[1] != table.shape[1]:
        table.detach().index_copy_(0, ids, rows)
        return
    view[ids.numpy()] = src


class RowGather(torch.autograd.Function):
    """``rows[index]`` whose backward sums gradients per row with one ``scatter_add_``.

    rows FloatTensor [U, D], index LongTensor [K] -> FloatTensor [K, D]. ``F.embedding``'s CPU
    backward runs one kernel per looked-up id (~3.7 ms for 32k ids, against 0.6 ms here).
    """

    @staticmethod
    def forward(ctx: Any, rows: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.num_rows = rows.shape[0]
        return rows.index_select(0, index)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (index,) = ctx.saved_tensors
        grad = grad.contiguous()
        out = grad.new_zeros((ctx.num_rows, grad.shape[1]))
        out.scatter_add_(0, index.unsqueeze(1).expand(-1, grad.shape[1]), grad)
        return out, None


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix64_(x: np.ndarray, tmp: np.ndarray) -> None:
    """SplitMix64's finalizer in place on uint64 ``x``: a counter-based generator (value k depends on
    k only). uint64 arrays wrap, as it needs; ``tmp`` is scratch space of ``x``'s shape.

    In place because a cold day draws thousands of rows a step: without temporaries the draw costs
    about half as much.
    """
    x += _GOLDEN
    np.right_shift(x, np.uint64(30), out=tmp)
    x ^= tmp
    x *= _MIX1
    np.right_shift(x, np.uint64(27), out=tmp)
    x ^= tmp
    x *= _MIX2
    np.right_shift(x, np.uint64(31), out=tmp)
    x ^= tmp


_IRWIN_HALL_SCALE = float(np.sqrt(3.0) / 2**16)  # sum of four U[0, 2^16) has variance 4 * 2^32 / 12
_QUARTER_LANES = np.uint64(0x0000FFFF0000FFFF)
_LOW_HALF = np.uint64(0xFFFFFFFF)


def initial_rows(seed: int, ids: Tensor, dim: int) -> Tensor:
    """The initial values of rows ``ids`` [U] of a table keyed ``seed``: [U, D], mean 0, std 0.01.

    A pure function of (seed, row, column), so a row gets the same values whenever and wherever
    training first touches it: any process, any rank, any order. One SplitMix64 hash per value;
    its four 16-bit quarters summed (Irwin-Hall: a bell within 3.5 std of 0, close enough to a
    normal for an initial embedding) avoid transcendental functions: ~10x cheaper than
    Box-Muller, which mattered because a cold day draws a few thousand rows every step. Every
    pass runs in place on one uint64 array (see ``_splitmix64_``).
    """
    n = int(ids.shape[0])
    key = np.full(1, seed, dtype=np.uint64)
    _splitmix64_(key, np.empty_like(key))
    cells = np.empty((n, dim), dtype=np.uint64)  # cell (row, column) is counter row * dim + column
    np.multiply(ids.detach().cpu().numpy().astype(np.uint64)[:, None], np.uint64(dim), out=cells)
    cells += np.arange(dim, dtype=np.uint64)
    cells ^= key
    tmp = np.empty_like(cells)
    _splitmix64_(cells, tmp)
    # two 32-bit lanes, each the sum of two quarters; then the sum of the four
    np.right_shift(cells, np.uint64(16), out=tmp)
    tmp &= _QUARTER_LANES
    cells &= _QUARTER_LANES
    cells += tmp
    np.right_shift(cells, np.uint64(32), out=tmp)
    cells &= _LOW_HALF
    cells += tmp
    values = cells.astype(np.float32)
    values -= np.float32(2 * (2**16 - 1))
    values *= np.float32(_IRWIN_HALL_SCALE * EMBEDDING_INIT_STD)
    return torch.from_numpy(values)


class RowSparseEmbedding(nn.Module):
    """An embedding table [num_rows, D] whose gradient covers only the rows a batch used.

    In training (grad enabled, module in train mode) ``forward`` looks up the unique ids of the batch,
    gathers those rows into a fresh leaf tensor ``rows`` [U, D] that requires grad, and returns
    ``rows[inverse]``. After ``backward`` the pair ``(ids, rows.grad)`` waits in the layer until the
    row-sparse optimizer (``optim.RowSparseAdam``) pops it with ``collect_grads`` and writes the
    updated rows back in place. The table itself is a parameter with ``requires_grad=False`` so no
    dense [num_rows, D] gradient is ever allocated and dense optimizers never see it.

    In eval mode, under ``torch.no_grad``/``inference_mode``, or when ``track_rows`` is False
    (a frozen table) it is a plain lookup with identical values.

    Rows are initialized lazily: a new table is all zeros (no page of it is even allocated). A
    training lookup of a row that is still all zeros uses its initial N(0, 0.01²) values
    (``initial_rows``: a pure function of the table's ``init_seed`` and the row), and the
    optimizer's first update writes initial value + update into the table. Rows training never
    updated stay zero, so they score as zero vectors everywhere (training's evaluation,
    checkpoints, serving alike).
    """

    def __init__(self, num_rows: int, dim: int) -> None:
        super().__init__()
        if num_rows < 1 or dim < 1:
            raise ValueError(f"embedding table needs at least one row and one column, got {num_rows}x{dim}")
        self.num_rows = num_rows
        self.dim = dim
        # Zero-filled by calloc: the OS maps pages only when a row on them is first written, so a
        # day that touches a fraction of a 2^23-row table pays for that fraction (lazy init below).
        self.weight = nn.Parameter(
            torch.from_numpy(np.zeros((num_rows, dim), dtype=np.float32)), requires_grad=False
        )
        self.track_rows = True
        self._pending: list[tuple[Tensor, Tensor]] = []
        # Key of the rows' initial values, drawn from torch's generator (so ``torch.manual_seed``
        # fixes it, identically on every data-parallel rank).
        self.init_seed = 0 if _SKIP_TABLE_INIT.get() else int(torch.randint(0, 2**62, (1,)).item())

    def forward(self, ids: Tensor) -> Tensor:
        """ids LongTensor [...] -> FloatTensor [..., D]."""
        if self.tracking:
            uniq, inverse = torch.unique(ids.reshape(-1), return_inverse=True)
            rows = self.lookup_rows(uniq)
            return RowGather.apply(rows, inverse).reshape(*ids.shape, self.dim)
        return F.embedding(ids, self.weight)

    @property
    def tracking(self) -> bool:
        """Whether a forward now records its rows for the row-sparse optimizer."""
        return self.track_rows and self.training and torch.is_grad_enabled()

    def lookup_rows(self, uniq: Tensor) -> Tensor:
        """Gather rows ``uniq`` [U] (unique ids) as a leaf [U, D] that requires grad and remember it.

        The caller builds its output from these rows (``RowGather``); their gradient reaches the
        optimizer through ``collect_grads``. ``FieldEmbedding`` calls this directly after one
        ``torch.unique`` over all fields.
        """
        rows = self.gather_initialized(uniq).requires_grad_()
        self._pending.append((uniq, rows))
        return rows

    def gather_initialized(self, ids: Tensor) -> Tensor:
        """``weight[ids]`` [U, D] for unique ``ids``, with the initial values of never-updated rows.

        Nothing is written here: a row enters the table when the optimizer writes its first update
        back, so a lookup whose gradient is never applied (a rank's padded step) leaves every
        rank's table as it was. The optimizer gathers through this too: under data parallelism a
        rank updates rows that only another rank's batch touched.
        """
        rows = gather_rows(self.weight, ids)
        fresh = rows.any(dim=1).logical_not_().nonzero().squeeze(1)
        if fresh.numel():
            init = initial_rows(self.init_seed, ids.index_select(0, fresh), self.dim)
            rows.index_copy_(0, fresh, init.to(rows.device))
        return rows

    def materialize(self) -> None:
        """Give every never-touched (all-zero) row its initial value now (tests, eager comparisons)."""
        with torch.no_grad():
            fresh = (~self.weight.any(dim=1)).nonzero().squeeze(1)
            if fresh.numel():
                scatter_rows(self.weight, fresh, initial_rows(self.init_seed, fresh, self.dim))

    def collect_grads(self) -> list[tuple[Tensor, Tensor]]:
        """Pop the ``(ids [U], grads [U, D])`` pairs of the forwards since the last call.

        Pairs whose rows received no gradient (the loss did not depend on them) are skipped. This is the
        hook a data-parallel wrapper uses: all-gather these pairs across ranks, then hand the merged
        pairs to ``RowSparseAdam.apply_rows``.
        """
        return [(ids, grads) for ids, _, grads in self.collect_rows()]

    def collect_rows(self) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Like ``collect_grads`` but with the gathered rows too: ``(ids [U], rows [U, D], grads [U, D])``.

        ``rows`` are the table's values at those ids as of the forward (the optimizer updates them
        in place and writes them back, saving a second gather from the table).
        """
        pending, self._pending = self._pending, []
        return [(ids, rows.detach(), rows.grad) for ids, rows in pending if rows.grad is not None]

    def clear_pending(self) -> None:
        """Forget gathered rows (``zero_grad`` of the row-sparse optimizer calls this)."""
        self._pending = []

    def extra_repr(self) -> str:
        return f"{self.num_rows}, {self.dim}"


def masked_mean_pool(emb: Tensor, ids: Tensor) -> Tensor:
    """Mean of the embeddings of non-zero ids; bucket 0's embedding when all ids are 0.

    emb FloatTensor [B, L, D], ids LongTensor [B, L] -> FloatTensor [B, D].
    """
    mask = ids != 0
    empty = ~mask.any(dim=1, keepdim=True)  # [B, 1]
    first = torch.zeros_like(mask)
    first[:, :1] = True
    mask = mask | (empty & first)
    weights = mask.to(emb.dtype)
    return (emb * weights.unsqueeze(-1)).sum(dim=1) / weights.sum(dim=1, keepdim=True)


class FieldEmbedding(nn.Module):
    """Every categorical and multi-valued field in one fused row-sparse table, with per-field row offsets.

    cat LongTensor [B, n_cat], multi LongTensor [B, n_multi, L] -> FloatTensor [B, n_cat + n_multi, D].
    Multi-valued fields are mean-pooled ignoring padding 0 (bucket 0's row when a row has no value).

    ``table`` [sum of buckets, D] stacks the fields' rows in field order, categorical first: field j
    owns rows ``offsets[j] .. offsets[j] + buckets[j] - 1``, so bucket id b of field j is row
    ``offsets[j] + b``. One table means one lookup per call instead of one per field: at inference
    one ``F.embedding`` for the categorical fields and one ``F.embedding_bag`` (sum mode, per-sample
    weights 1/count) for the multi-valued ones; in training one ``torch.unique`` over every key, one
    gather and one ``RowGather``, and a single table for the row-sparse optimizer to update.

    Checkpoints written before fusion hold one table per field (``cat_tables.<j>.weight``,
    ``multi_tables.<j>.weight``); ``load_state_dict`` concatenates them in field order.
    """

    _cat_offsets: Tensor  # [n_cat] first row of each categorical field
    _multi_offsets: Tensor  # [1, n_multi, 1] first row of each multi-valued field
    _cat_limits: Tensor  # [n_cat] buckets per categorical field
    _multi_limits: Tensor  # [1, n_multi, 1] buckets per multi-valued field

    def __init__(self, cat_buckets: Sequence[int], multi_buckets: Sequence[int], dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.n_cat = len(cat_buckets)
        self.n_multi = len(multi_buckets)
        self.buckets = [int(n) for n in (*cat_buckets, *multi_buckets)]
        if any(n < 1 for n in self.buckets):
            raise ValueError(f"every field needs at least one bucket, got {self.buckets}")
        offsets = [0]
        for n in self.buckets:
            offsets.append(offsets[-1] + n)
        self.offsets = offsets  # field j owns rows offsets[j] .. offsets[j+1]-1
        self.table = RowSparseEmbedding(max(offsets[-1], 1), dim)
        # int32 keys when they fit: torch.unique sorts them ~1.5x faster than int64
        self._key_type = torch.int32 if offsets[-1] < 2**31 else torch.int64
        # derived from the spec, so not saved (persistent=False); buffers, so .to(device) moves them
        for name, values, shape in (
            ("_cat_offsets", offsets[: self.n_cat], (-1,)),
            ("_multi_offsets", offsets[self.n_cat : -1], (1, -1, 1)),
            ("_cat_limits", self.buckets[: self.n_cat], (-1,)),
            ("_multi_limits", self.buckets[self.n_cat :], (1, -1, 1)),
        ):
            self.register_buffer(name, torch.tensor(values, dtype=torch.int64).view(*shape), persistent=False)
        self._np_cat_offsets = self._cat_offsets.numpy().copy()
        self._np_multi_offsets = self._multi_offsets.numpy().copy()
        self._np_cat_limits = self._cat_limits.numpy().copy()
        self._np_multi_limits = self._multi_limits.numpy().copy()

    @property
    def num_fields(self) -> int:
        return self.n_cat + self.n_multi

    def tables(self) -> list[RowSparseEmbedding]:
        """The one fused table (a list, for optimizers that take several)."""
        return [self.table] if self.num_fields else []

    def field_rows(self, field: int) -> Tensor:
        """The rows of field ``field`` (categorical first): a view [buckets, D] of the fused table."""
        return self.table.weight[self.offsets[field] : self.offsets[field + 1]]

    def forward(self, cat: Tensor, multi: Tensor) -> Tensor:
        b = cat.shape[0]
        if self.num_fields == 0:
            return cat.new_zeros((b, 0, self.dim), dtype=torch.float32)
        if self.table.tracking and b > 0:
            self._check_range(cat, multi)
            return self._train_lookup(cat, multi)
        if cat.device.type == "cpu" and multi.device.type == "cpu":
            return self._cpu_lookup(cat, multi)
        self._check_range(cat, multi)
        weight = self.table.weight
        parts = []
        if self.n_cat:
            parts.append(F.embedding(cat + self._cat_offsets, weight))  # [B, n_cat, D]
        if self.n_multi:
            length = multi.shape[2]
            keys = (multi + self._multi_offsets).view(-1, length)  # [B * n_multi, L]
            pooled = F.embedding_bag(
                keys, weight, mode="sum", per_sample_weights=self._pool_weights(multi).view(-1, length)
            )
            parts.append(pooled.view(b, self.n_multi, self.dim))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _cpu_lookup(self, cat: Tensor, multi: Tensor) -> Tensor:
        """Inference lookup on CPU: keys, range checks and pooling weights in NumPy, two torch ops.

        At serving sizes (1-100 rows) every torch operator costs a few µs of dispatch whatever
        its size, while the same NumPy operation on a few hundred ids costs well under one: this
        path is ~2x faster than the torch-only one at batch 1 and gives the same values.
        """
        b = cat.shape[0]
        weight = self.table.weight
        parts = []
        if self.n_cat:
            c = cat.numpy()
            if c.size and ((c < 0).any() or (c >= self._np_cat_limits).any()):
                self._check_range(cat, multi)  # raises, naming the field
            parts.append(F.embedding(torch.from_numpy(c + self._np_cat_offsets), weight))
        if self.n_multi:
            m = multi.numpy()
            length = m.shape[2]
            if m.size and ((m < 0).any() or (m >= self._np_multi_limits).any()):
                self._check_range(cat, multi)
            present = m != 0
            count = present.sum(axis=2, keepdims=True, dtype=np.float32)
            weights = present.astype(np.float32)
            if length:
                weights[:, :, :1] += count == 0
            weights /= np.maximum(count, 1.0)
            pooled = F.embedding_bag(
                torch.from_numpy((m + self._np_multi_offsets).reshape(-1, length)),
                weight,
                mode="sum",
                per_sample_weights=torch.from_numpy(weights.reshape(-1, length)),
            )
            parts.append(pooled.view(b, self.n_multi, self.dim))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _check_range(self, cat: Tensor, multi: Tensor) -> None:
        """Refuse ids outside their own field's rows (a fused table would read a neighbour's)."""
        if self.n_cat and bool(((cat < 0) | (cat >= self._cat_limits)).any()):
            bad = int(((cat < 0) | (cat >= self._cat_limits)).any(dim=0).nonzero()[0])
            raise IndexError(
                f"categorical field {bad}: bucket id out of range for its table of {self.buckets[bad]} rows"
            )
        if self.n_multi and multi.numel() and bool(((multi < 0) | (multi >= self._multi_limits)).any()):
            bad = int(((multi < 0) | (multi >= self._multi_limits)).any(dim=2).any(dim=0).nonzero()[0])
            size = self.buckets[self.n_cat + bad]
            raise IndexError(f"multi-valued field {bad}: bucket id out of range for its table of {size} rows")

    @staticmethod
    def _pool_weights(multi: Tensor) -> Tensor:
        """Mean-pooling weights [B, n_multi, L]: 1/count on non-zero ids; 1 on position 0 of an empty bag."""
        weights = (multi != 0).to(torch.float32)
        count = weights.sum(dim=2, keepdim=True)
        if multi.shape[2]:
            weights[:, :, 0:1] += count == 0
        return weights / count.clamp_(min=1.0)

    def _train_lookup(self, cat: Tensor, multi: Tensor) -> Tensor:
        """Training lookup of every field at once through the table's row-sparse path."""
        b = cat.shape[0]
        key_type = self._key_type
        parts = []
        if self.n_cat:
            parts.append((cat + self._cat_offsets).to(key_type).reshape(-1))
        if self.n_multi:
            parts.append((multi + self._multi_offsets).to(key_type).reshape(-1))
        keys = parts[0] if len(parts) == 1 else torch.cat(parts)
        uniq, inverse = torch.unique(keys, return_inverse=True)
        rows = self.table.lookup_rows(uniq.to(torch.int64))
        emb = RowGather.apply(rows, inverse)  # [B * n_cat + B * n_multi * L, D]
        # Slices only when both kinds of field are present: a slice's backward is a zeroed copy of
        # all of ``emb`` ([32768, 16] in the bench, ~0.5 ms a step) even when it covers every row.
        if not self.n_multi:
            return emb.view(b, self.n_cat, self.dim)
        n_cat_keys = b * self.n_cat
        bags = (emb[n_cat_keys:] if self.n_cat else emb).view(b, self.n_multi, multi.shape[2], self.dim)
        pooled = (bags * self._pool_weights(multi).unsqueeze(-1)).sum(dim=2)
        if not self.n_cat:
            return pooled
        return torch.cat([emb[:n_cat_keys].view(b, self.n_cat, self.dim), pooled], dim=1)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Fuse per-field tables of pre-fusion checkpoints (``cat_tables.j`` / ``multi_tables.j``)."""
        legacy = [f"{prefix}cat_tables.{j}.weight" for j in range(self.n_cat)]
        legacy += [f"{prefix}multi_tables.{j}.weight" for j in range(self.n_multi)]
        fused_key = f"{prefix}table.weight"
        if legacy and fused_key not in state_dict and all(k in state_dict for k in legacy):
            state_dict[fused_key] = torch.cat([state_dict.pop(k) for k in legacy])
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def legacy_table_layout(state_dict: dict[str, Tensor]) -> bool:
    """Whether a model state dict holds per-field tables (written before fused tables)."""
    return any(".cat_tables." in k or ".multi_tables." in k for k in state_dict)


class NumericEmbedding(nn.Module):
    """Scales one learned vector per numeric field by the field's value (for FM-style interactions).

    num FloatTensor [B, n_num] -> FloatTensor [B, n_num, D].
    """

    def __init__(self, n_num: int, dim: int) -> None:
        super().__init__()
        self.vectors = nn.Parameter(torch.empty(n_num, dim))
        nn.init.normal_(self.vectors, mean=0.0, std=EMBEDDING_INIT_STD)

    def forward(self, num: Tensor) -> Tensor:
        return num.unsqueeze(-1) * self.vectors


class MLP(nn.Module):
    """Linear -> ReLU -> Dropout blocks. x FloatTensor [B, in_dim] -> FloatTensor [B, hidden[-1]]."""

    def __init__(self, in_dim: int, hidden: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_dim
        for width in hidden:
            layers += [nn.Linear(prev, width), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = width
        self.out_dim = prev
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return self.net(x)
        # Eval: the same Linear -> ReLU arithmetic (dropout is the identity) without a module call
        # per layer, whose dispatch cost more than the matmuls at serving batch sizes.
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                x = torch.relu(F.linear(x, layer.weight, layer.bias))
        return x


class CrossNetV2(nn.Module):
    """DCN-v2 cross network: x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l.

    x0 FloatTensor [B, d] -> FloatTensor [B, d].
    """

    def __init__(self, dim: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_layers))

    def forward(self, x0: Tensor) -> Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


class FMInteraction(nn.Module):
    """Factorization-machine second-order term: ½·Σ_d[(Σ_f v_fd)² − Σ_f v_fd²].

    v FloatTensor [B, F, D] -> FloatTensor [B].
    """

    def forward(self, v: Tensor) -> Tensor:
        square_of_sum = v.sum(dim=1).pow(2)
        sum_of_square = v.pow(2).sum(dim=1)
        return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)
