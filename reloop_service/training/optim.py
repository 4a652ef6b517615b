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

import torch
from torch import Tensor

from reloop_service.training.layers import RowSparseEmbedding


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
        width concatenated: a dozen elementwise ops per step instead of a dozen per table.
        """
        by_dim: dict[int, list[tuple[Tensor, Tensor, Tensor, Tensor | None]]] = {}
        for update in updates:
            by_dim.setdefault(update[0].shape[1], []).append(update)
        for d, members in by_dim.items():
            packed = [self._packed(w) for w, _, _, _ in members]
            blocks = [p.index_select(0, ids) for p, (_, ids, _, _) in zip(packed, members, strict=True)]
            rows = [r if r is not None else w.index_select(0, ids) for w, ids, _, r in members]
            block = blocks[0] if len(blocks) == 1 else torch.cat(blocks)  # [U, 2D + 1]
            row = rows[0] if len(rows) == 1 else torch.cat(rows)  # [U, D]
            grad = members[0][2] if len(members) == 1 else torch.cat([g for _, _, g, _ in members])
            self._adam(block, row, grad, d, group)
            sizes = [ids.shape[0] for _, ids, _, _ in members]
            for (weight, ids, _, _), p, b, r in zip(
                members, packed, block.split(sizes), row.split(sizes), strict=True
            ):
                weight.index_copy_(0, ids, r)
                p.index_copy_(0, ids, b)

    @staticmethod
    def _adam(block: Tensor, rows: Tensor, grads: Tensor, d: int, group: dict[str, Any]) -> None:
        """Adam on gathered state ``block`` [U, 2D + 1] and ``rows`` [U, D], both in place."""
        beta1, beta2 = group["betas"]
        lr, eps = group["lr"], group["eps"]
        m, v, step = block[:, :d], block[:, d : 2 * d], block[:, 2 * d]
        step.add_(1.0)
        m.lerp_(grads, 1.0 - beta1)
        v.mul_(beta2).addcmul_(grads, grads, value=1.0 - beta2)
        # Bias corrections in float64 (as torch.optim.Adam does with Python floats): 1 - 0.999^t
        # loses most of its digits in float32 for small t.
        step64 = step.double()
        bias_correction1 = 1.0 - torch.pow(beta1, step64)
        bias_correction2_sqrt = (1.0 - torch.pow(beta2, step64)).sqrt_()
        step_size = (lr / bias_correction1).to(rows.dtype).unsqueeze(1)  # [U, 1]
        denom = (v.sqrt() / bias_correction2_sqrt.to(rows.dtype).unsqueeze(1)).add_(eps)
        rows.addcdiv_(m * step_size, denom, value=-1.0)
