"""Row-sparse Adam for embedding tables: each step reads and writes only the rows a batch used.

Stock ``SparseAdam``/``Adagrad`` receive a sparse COO gradient with one entry per looked-up id and
coalesce it every step (a sort of B x fields ids plus a scatter), which on a 2^20-row table costs more
than the MLP. Here the embedding layer (``layers.RowSparseEmbedding``) has already deduplicated the
ids with ``torch.unique`` and hands over one gradient row per unique id; the optimizer gathers the
Adam moments of those rows, updates them and writes rows and moments back with ``index_copy_``.

Bias correction uses a per-row step count (how many times that row was updated), which is exact
Adam for every row on its own: a row seen for the first time after 10^5 steps gets the same first
update as on step 1 instead of an uncorrected, tiny one. Untouched rows keep their weights and
moments bit for bit (lazy Adam). No weight decay: decaying rows only when they appear would be a
frequency-dependent penalty nobody asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reloop_service.training.layers import RowSparseEmbedding, gather_rows, row_view, scatter_rows


def coalesce_rows(ids: Tensor, grads: Tensor) -> tuple[Tensor, Tensor]:
    """Sum the gradient rows of repeated ids: ids [N], grads [N, D] -> unique ids [U], grads [U, D].

    Needed when pairs come from several forwards (gradient accumulation) or several ranks.
    """
    uniq, inverse = torch.unique(ids, return_inverse=True)
    summed = grads.new_zeros((uniq.shape[0], grads.shape[1]))
    summed.index_add_(0, inverse, grads)
    return uniq, summed


class RowSparseAdam(torch.optim.Optimizer):
    """Lazy Adam over ``RowSparseEmbedding`` tables with per-row step counts.

    State per table: one packed tensor ``moments`` [num_rows, 2·D + 1] holding, per row, the first
    moment (columns 0..D-1), the second moment (D..2D-1) and the row's step count (last column,
    float32: exact below 2^24 updates of one row). Packing makes a step read and write each touched
    row's state as one contiguous 132-byte record instead of three scattered ones: on tables far
    larger than the caches every step is bound by those random memory accesses. ``state_dict`` /
    ``load_state_dict`` are torch's, so checkpoints store it like any optimizer.
    """

    def __init__(
        self,
        tables: Sequence[RowSparseEmbedding],
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        self._tables = list(tables)
        params = [t.weight for t in self._tables]
        if not params:
            raise ValueError("RowSparseAdam needs at least one embedding table")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        self._table_of = {id(t.weight): t for t in self._tables}
        # (lr, beta1, beta2) -> bias-correction tables by step count; not state (rebuilt on demand)
        self._bias_luts: dict[tuple[float, float, float, str], tuple[Tensor, Tensor]] = {}

    def moments(self, table: RowSparseEmbedding) -> tuple[Tensor, Tensor, Tensor]:
        """Views of ``table``'s state: first moment [N, D], second moment [N, D], row steps [N]."""
        packed = self._packed(table.weight)
        d = table.weight.shape[1]
        return packed[:, :d], packed[:, d : 2 * d], packed[:, 2 * d]

    def _packed(self, weight: Tensor) -> Tensor:
        state = self.state[weight]
        if "moments" not in state:
            n, d = weight.shape
            state["moments"] = torch.zeros((n, 2 * d + 1), dtype=weight.dtype, device=weight.device)
        return state["moments"]  # type: ignore[no-any-return]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop gathered rows that were never stepped (the tables hold no dense gradient)."""
        for table in self._tables:
            table.clear_pending()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Apply the gradients gathered by every table since the last step."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            updates: list[tuple[Tensor, Tensor, Tensor, Tensor | None]] = []
            for weight in group["params"]:
                found = self._table_of[id(weight)].collect_rows()
                if len(found) == 1:
                    ids, rows, grads = found[0]
                    updates.append((weight, ids, grads, rows))
                elif found:  # several forwards since the last step: sum their gradients per id
                    ids, grads = coalesce_rows(
                        torch.cat([f[0] for f in found]), torch.cat([f[2] for f in found])
                    )
                    updates.append((weight, ids, grads, None))
            self._apply_many(updates, group)
        return loss

    @torch.no_grad()
    def apply_rows(
        self, table: RowSparseEmbedding, ids: Tensor, grads: Tensor, *, unique: bool = False
    ) -> None:
        """Adam-update ``table`` at ``ids`` [N] with ``grads`` [N, D] (the data-parallel hook).

        A distributed trainer calls ``table.collect_grads()``, all-gathers the pairs across ranks,
        averages them and calls this; repeated ids are summed first unless ``unique`` is True.
        """
        group = next((g for g in self.param_groups if any(p is table.weight for p in g["params"])), None)
        if group is None:
            raise ValueError("table is not managed by this optimizer")
        if not unique:
            ids, grads = coalesce_rows(ids, grads)
        self._apply(table.weight, ids, grads, group)

    def _apply(self, weight: Tensor, ids: Tensor, grads: Tensor, group: dict[str, Any]) -> None:
        """One Adam step on unique rows ``ids`` of one table."""
        self._apply_many([(weight, ids, grads, None)], group)

    def _apply_many(
        self, updates: Sequence[tuple[Tensor, Tensor, Tensor, Tensor | None]], group: dict[str, Any]
    ) -> None:
        """One Adam step on the unique rows of several tables, in place, in torch.optim.Adam's arithmetic.

        ``updates`` holds ``(weight [N, D], ids [U], grads [U, D], rows [U, D] | None)`` per table;
        ``rows``, when given, are ``weight[ids]`` already gathered by the forward (updated in place
        and written back). The Adam arithmetic runs once over the rows of all tables of the same
        width concatenated: a dozen elementwise ops per step instead of a dozen per table. Rows and
        state records move between the tables and the batch through ``layers.gather_rows`` /
        ``scatter_rows`` (one memcpy per row on CPU).
        """
        by_dim: dict[int, list[tuple[Tensor, Tensor, Tensor, Tensor | None]]] = {}
        for update in updates:
            by_dim.setdefault(update[0].shape[1], []).append(update)
        for d, members in by_dim.items():
            packed = [self._packed(w) for w, _, _, _ in members]
            sizes = [ids.shape[0] for _, ids, _, _ in members]
            block = self._gather_state(packed, [ids for _, ids, _, _ in members], sum(sizes))  # [U, 2D + 1]
            rows = [r if r is not None else gather_rows(w, ids) for w, ids, _, r in members]
            row = rows[0] if len(rows) == 1 else torch.cat(rows)  # [U, D]
            grad = members[0][2] if len(members) == 1 else torch.cat([g for _, _, g, _ in members])
            self._adam(block, row, grad, d, group)
            for (weight, ids, _, _), p, b, r in zip(
                members, packed, block.split(sizes), row.split(sizes), strict=True
            ):
                scatter_rows(weight, ids, r)
                scatter_rows(p, ids, b)

    @staticmethod
    def _gather_state(packed: Sequence[Tensor], ids: Sequence[Tensor], total: int) -> Tensor:
        """The state records of rows ``ids[i]`` of ``packed[i]``, concatenated: [sum U_i, 2D + 1]."""
        if len(packed) == 1:
            return gather_rows(packed[0], ids[0])
        out = packed[0].new_empty((total, packed[0].shape[1]))
        view = row_view(out)
        start = 0
        for p, i in zip(packed, ids, strict=True):
            end = start + i.shape[0]
            source = row_view(p)
            if view is not None and source is not None and i.device.type == "cpu":
                np.take(source, i.numpy(), out=view[start:end])
            else:
                out[start:end] = p.index_select(0, i)
            start = end
        return out

    def _bias_corrections(
        self, group: dict[str, Any], max_step: int, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """Per step count t: (lr / (1 - beta1^t), sqrt(1 - beta2^t)), float32 tables indexed by t.

        Computed in float64 as torch.optim.Adam does with Python floats (1 - 0.999^t loses most of
        its digits in float32 for small t) but once per step count instead of once per row and
        step; extended when a row's count passes the table's end.
        """
        beta1, beta2 = group["betas"]
        key = (float(group["lr"]), float(beta1), float(beta2), str(device))
        cached = self._bias_luts.get(key)
        if cached is None or cached[0].shape[0] <= max_step:
            size = max(1024, 1 << max(max_step, 1).bit_length())
            t = torch.arange(size, dtype=torch.float64)
            step_size = (key[0] / (1.0 - torch.pow(beta1, t))).to(torch.float32)
            bc2_sqrt = (1.0 - torch.pow(beta2, t)).sqrt_().to(torch.float32)
            cached = (step_size.to(device), bc2_sqrt.to(device))
            self._bias_luts[key] = cached
        return cached

    def _adam(self, block: Tensor, rows: Tensor, grads: Tensor, d: int, group: dict[str, Any]) -> None:
        """Adam on gathered state ``block`` [U, 2D + 1] and ``rows`` [U, D], both in place."""
        beta1, beta2 = group["betas"]
        eps = group["eps"]
        m, v, step = block[:, :d], block[:, d : 2 * d], block[:, 2 * d]
        step.add_(1.0)
        t = step.to(torch.int64)
        step_lut, bc2_lut = self._bias_corrections(group, int(t.max()) if t.numel() else 0, rows.device)
        m.lerp_(grads, 1.0 - beta1)
        v.mul_(beta2).addcmul_(grads, grads, value=1.0 - beta2)
        step_size = step_lut.index_select(0, t).to(rows.dtype).unsqueeze(1)  # [U, 1]
        bc2_sqrt = bc2_lut.index_select(0, t).to(rows.dtype).unsqueeze(1)
        denom = v.sqrt().div_(bc2_sqrt).add_(eps)
        rows.addcdiv_(m * step_size, denom, value=-1.0)
