"""Small building blocks of the CTR models (FuxiCTR-style), with tensor shapes in their docstrings.

B = batch size, F = number of embedded fields, D = embedding dimension, L = multi-value length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Standard deviation of the initial embedding rows (small, so untrained rows barely move the logit).
EMBEDDING_INIT_STD = 0.01


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
    """

    def __init__(self, num_rows: int, dim: int) -> None:
        super().__init__()
        if num_rows < 1 or dim < 1:
            raise ValueError(f"embedding table needs at least one row and one column, got {num_rows}x{dim}")
        self.num_rows = num_rows
        self.dim = dim
        self.weight = nn.Parameter(torch.empty(num_rows, dim), requires_grad=False)
        self.track_rows = True
        self._pending: list[tuple[Tensor, Tensor]] = []
        nn.init.normal_(self.weight, mean=0.0, std=EMBEDDING_INIT_STD)

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
        rows = gather_rows(self.weight, uniq).requires_grad_()
        self._pending.append((uniq, rows))
        return rows

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
    """One row-sparse table per categorical and per multi-valued field.

    cat LongTensor [B, n_cat], multi LongTensor [B, n_multi, L] -> FloatTensor [B, n_cat + n_multi, D].
    Multi-valued fields are mean-pooled ignoring padding 0.

    In training the categorical fields are looked up together: their ids are offset into one id
    space (table j starts at the sum of the earlier tables' sizes), deduplicated by one
    ``torch.unique`` and gathered into [B, n_cat, D] by one ``RowGather``, instead of a unique,
    a gather, a backward and a ``torch.stack`` per field. Each table still receives its own
    ``(ids, rows)`` pair, so the optimizer and the data-parallel hooks see per-table rows as before.
    """

    def __init__(self, cat_buckets: Sequence[int], multi_buckets: Sequence[int], dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.cat_tables = nn.ModuleList(RowSparseEmbedding(n, dim) for n in cat_buckets)
        self.multi_tables = nn.ModuleList(RowSparseEmbedding(n, dim) for n in multi_buckets)
        starts = [0]
        for n in cat_buckets:
            starts.append(starts[-1] + int(n))
        self._cat_starts = starts  # table j holds keys starts[j] .. starts[j+1]-1
        self._cat_buckets = [int(n) for n in cat_buckets]

    @property
    def num_fields(self) -> int:
        return len(self.cat_tables) + len(self.multi_tables)

    def tables(self) -> list[RowSparseEmbedding]:
        """Every table, categorical first, in field order."""
        return [*self.cat_tables, *self.multi_tables]  # type: ignore[list-item]

    def forward(self, cat: Tensor, multi: Tensor) -> Tensor:
        tables: list[RowSparseEmbedding] = list(self.cat_tables)  # type: ignore[arg-type]
        fused = len(tables) > 1 and cat.shape[0] > 0 and all(t.tracking for t in tables)
        parts = [] if fused else [table(cat[:, i]) for i, table in enumerate(tables)]
        parts += [
            masked_mean_pool(table(multi[:, i]), multi[:, i]) for i, table in enumerate(self.multi_tables)
        ]
        if fused:
            emb = self._lookup_cat(cat, tables)  # [B, n_cat, D]
            return torch.cat([emb, torch.stack(parts, dim=1)], dim=1) if parts else emb
        if not parts:
            return cat.new_zeros((cat.shape[0], 0, self.dim), dtype=torch.float32)
        return torch.stack(parts, dim=1)

    def _lookup_cat(self, cat: Tensor, tables: list[RowSparseEmbedding]) -> Tensor:
        """Training lookup of every categorical field at once: cat [B, n_cat] -> [B, n_cat, D]."""
        buckets = torch.tensor(self._cat_buckets, device=cat.device)
        if bool((cat < 0).any()) or bool((cat >= buckets).any()):
            bad = int(((cat < 0) | (cat >= buckets)).any(dim=0).nonzero()[0])
            size = self._cat_buckets[bad]
            raise IndexError(f"categorical field {bad}: bucket id out of range for its table of {size} rows")
        # int32 keys when they fit: torch.unique sorts them ~1.5x faster than int64
        key_type = torch.int32 if self._cat_starts[-1] < 2**31 else torch.int64
        starts = torch.tensor(self._cat_starts, device=cat.device, dtype=key_type)
        keys = (cat.to(key_type) + starts[:-1]).reshape(-1)  # key of (row b, field j) at b * n_cat + j
        uniq, inverse = torch.unique(keys, return_inverse=True)
        bounds = torch.searchsorted(uniq, starts).tolist()
        rows = [
            table.lookup_rows(uniq[bounds[j] : bounds[j + 1]].to(torch.int64) - self._cat_starts[j])
            for j, table in enumerate(tables)
            if bounds[j + 1] > bounds[j]
        ]
        table_rows = torch.cat(rows) if len(rows) > 1 else rows[0]
        return RowGather.apply(table_rows, inverse).view(cat.shape[0], cat.shape[1], self.dim)


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
        return self.net(x)


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
