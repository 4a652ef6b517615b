"""Row-sparse Adam for embedding tables: each step reads and writes only the rows a batch used.

Stock ``SparseAdam``/``Adagrad`` receive a sparse COO gradient with one entry per looked-up id and
coalesce it every step (a sort of B x fields ids plus a scatter), which on a 2^20-row table costs more
than the MLP. Here the embedding layer (``layers.RowSparseEmbedding``) has already deduplicated the
ids with ``torch.unique`` and hands over one gradient row per unique id; the optimizer gathers the
Adam moments of those rows, updates them and writes rows and moments back with ``index_copy_``.

Bias correction uses one step count per table (how many optimizer steps updated the table), as
``torch.optim.Adam``/``SparseAdam`` and FuxiCTR do: every row of a table is corrected with the
table's step t, whatever the row's own history. Untouched rows keep their weights and moments bit
for bit (lazy Adam, as ``SparseAdam``). No weight decay: decaying rows only when they appear would be a
frequency-dependent penalty nobody asked for.
"""

from __future__ import annotations

import math
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


def _fuse_per_field_state(state_dict: dict[str, Any], groups: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``state_dict`` with per-field table states merged into one per fused table, when that is the case.

    Applies only when every saved group has several parameters where this optimizer's matching group
    has one table whose row count is the sum of theirs; anything else is returned unchanged (and
    torch's loader reports a real mismatch).
    """
    saved_groups = state_dict.get("param_groups", [])
    if len(saved_groups) != len(groups) or not saved_groups:
        return state_dict
    state = state_dict.get("state", {})
    new_state: dict[int, Any] = {}
    new_groups: list[dict[str, Any]] = []
    for saved, group in zip(saved_groups, groups, strict=True):
        ids = list(saved["params"])
        if len(group["params"]) != 1 or len(ids) <= 1:
            return state_dict
        (table,) = group["params"]
        parts = [state.get(i) for i in ids]
        if any(p is None or "moments" not in p for p in parts):
            return state_dict
        d = table.shape[1]
        moments = [p["moments"][:, : 2 * d] for p in parts]
        if sum(m.shape[0] for m in moments) != table.shape[0] or any(m.shape[1] != 2 * d for m in moments):
            return state_dict
        steps = [
            float(p["step"])
            if "step" in p
            else float(p["moments"][:, 2 * d].max())
            if p["moments"].shape[1] > 2 * d
            else 0.0
            for p in parts
        ]
        index = len(new_groups)
        new_state[index] = {
            "moments": torch.cat(moments),
            "step": torch.tensor(max(steps), dtype=torch.float64),
        }
        new_groups.append({**saved, "params": [index]})
    return {"state": new_state, "param_groups": new_groups}


class RowSparseAdam(torch.optim.Optimizer):
    """Lazy Adam over ``RowSparseEmbedding`` tables with one step count per table.

    State per table: ``moments`` [num_rows, 2·D] holding, per row, the first moment (columns
    0..D-1) and the second moment (D..2D-1), and ``step``, a float64 scalar tensor counting the
    steps that updated the table. Packing the two moments makes a step read and write each touched
    row's state as one contiguous record instead of two scattered ones: on tables far larger than
    the caches every step is bound by those random memory accesses. ``state_dict`` /
    ``load_state_dict`` are torch's, so checkpoints store it like any optimizer.

    Older state (before per-table steps) packed a per-row step count as a last column
    (``moments`` [N, 2·D + 1]); ``load_state_dict`` converts it: the column is dropped and the
    table's step becomes the largest per-row count (the number of steps the most frequent row saw,
    a lower bound of the table's true step count).
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

    def moments(self, table: RowSparseEmbedding) -> tuple[Tensor, Tensor]:
        """Views of ``table``'s state: first moment [N, D], second moment [N, D]."""
        packed = self._packed(table.weight)
        d = table.weight.shape[1]
        return packed[:, :d], packed[:, d : 2 * d]

    def table_step(self, table: RowSparseEmbedding) -> int:
        """How many optimizer steps have updated ``table`` (its Adam t)."""
        step = self.state[table.weight].get("step")
        return 0 if step is None else int(step)

    def _packed(self, weight: Tensor) -> Tensor:
        state = self.state[weight]
        if "moments" not in state:
            n, d = weight.shape
            if weight.device.type == "cpu" and weight.dtype == torch.float32:
                # calloc'd by NumPy: the OS maps zero pages lazily, so a day that touches a few
                # rows of a 2^20-row table pays for those pages only (torch.zeros writes them all:
                # 2.7 s of CPU for the benchmark's 1 GiB of moments)
                state["moments"] = torch.from_numpy(np.zeros((n, 2 * d), dtype=np.float32))
            else:
                state["moments"] = torch.zeros((n, 2 * d), dtype=weight.dtype, device=weight.device)
            state["step"] = torch.zeros((), dtype=torch.float64)
        return state["moments"]  # type: ignore[no-any-return]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's loader, after converting older layouts (see the class docstring).

        State saved for per-field tables (before ``layers.FieldEmbedding`` fused them) has one entry
        per field where this optimizer has one fused table: the fields' moments are stacked in
        field order, as their rows are, and the fused step is the largest of the fields' steps.
        """
        super().load_state_dict(_fuse_per_field_state(state_dict, self.param_groups))
        for weight, state in self.state.items():
            moments = state.get("moments")
            d = weight.shape[1]
            if moments is not None and moments.shape[1] == 2 * d + 1:
                state["step"] = moments[:, 2 * d].max().to(torch.float64).cpu()
                state["moments"] = moments[:, : 2 * d].contiguous()
            elif moments is not None and "step" not in state:
                state["step"] = torch.zeros((), dtype=torch.float64)

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
        Each call is one step of the table (its step count grows by one).
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
            steps = []
            for w, _, _, _ in members:
                step = self.state[w]["step"]
                step.add_(1.0)
                steps.append(int(step))
            sizes = [ids.shape[0] for _, ids, _, _ in members]
            block = self._gather_state(packed, [ids for _, ids, _, _ in members], sum(sizes))  # [U, 2D]
            rows = [
                r if r is not None else self._table_of[id(w)].gather_initialized(ids)
                for w, ids, _, r in members
            ]
            row = rows[0] if len(rows) == 1 else torch.cat(rows)  # [U, D]
            grad = members[0][2] if len(members) == 1 else torch.cat([g for _, _, g, _ in members])
            self._adam(block, row, grad, d, steps, sizes, group)
            for (weight, ids, _, _), p, b, r in zip(
                members, packed, block.split(sizes), row.split(sizes), strict=True
            ):
                scatter_rows(weight, ids, r)
                scatter_rows(p, ids, b)

    @staticmethod
    def _gather_state(packed: Sequence[Tensor], ids: Sequence[Tensor], total: int) -> Tensor:
        """The state records of rows ``ids[i]`` of ``packed[i]``, concatenated: [sum U_i, 2D]."""
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

    @staticmethod
    def _bias_correction(group: dict[str, Any], step: int) -> tuple[float, float]:
        """(lr / (1 - beta1^t), sqrt(1 - beta2^t)) in float64, as torch.optim.Adam computes them."""
        beta1, beta2 = group["betas"]
        return float(group["lr"]) / (1.0 - beta1**step), math.sqrt(1.0 - beta2**step)

    def _adam(
        self,
        block: Tensor,
        rows: Tensor,
        grads: Tensor,
        d: int,
        steps: Sequence[int],
        sizes: Sequence[int],
        group: dict[str, Any],
    ) -> None:
        """Adam on gathered state ``block`` [U, 2D] and ``rows`` [U, D], both in place.

        ``steps[i]`` is the step count of the table owning the next ``sizes[i]`` rows.
        """
        beta1, beta2 = group["betas"]
        eps = group["eps"]
        m, v = block[:, :d], block[:, d : 2 * d]
        m.lerp_(grads, 1.0 - beta1)
        v.mul_(beta2).addcmul_(grads, grads, value=1.0 - beta2)
        corrections = [self._bias_correction(group, t) for t in steps]
        # sqrt of the strided view ``v`` takes torch's scalar path (0.96 ms a bench step against 0.32
        # for the same rows contiguous, docs/benchmarks.md fifth round); the values are the same bits
        denom = torch.empty(v.shape, dtype=v.dtype, device=v.device).copy_(v).sqrt_()
        if len(set(steps)) == 1:
            step_size, bc2_sqrt = corrections[0]
            rows.addcdiv_(m, denom.div_(bc2_sqrt).add_(eps), value=-step_size)
            return
        counts = torch.tensor(sizes, device=rows.device)
        size_t = torch.tensor([c[0] for c in corrections], dtype=rows.dtype, device=rows.device)
        bc2_t = torch.tensor([c[1] for c in corrections], dtype=rows.dtype, device=rows.device)
        step_col = size_t.repeat_interleave(counts).unsqueeze(1)  # [U, 1]
        bc2_col = bc2_t.repeat_interleave(counts).unsqueeze(1)
        rows.addcdiv_(m * step_col, denom.div_(bc2_col).add_(eps), value=-1.0)
