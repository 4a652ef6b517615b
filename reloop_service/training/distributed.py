"""Data-parallel training with PyTorch's own engines: ``torchrun`` + DistributedDataParallel.

How a cycle trains on N processes (one host with ``reloop cycle run --nproc N``, or many hosts with
``torchrun … -m reloop_service.training.distributed``):

* Process group: ``gloo`` on CPU, ``nccl`` when every rank has a GPU. Rank, world size and the
  rendezvous come from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``…).
* Data: each rank reads a disjoint shard of the day's Parquet row groups (``shard_row_groups``:
  every (file, row group) of the day, dealt out largest first to the rank with the fewest rows,
  the same deal on every rank, so a day of one big file still splits evenly). Every rank takes
  part in the same number of optimizer steps: the ranks agree on the largest local step count
  (``agree_steps``, an all-reduce MAX) and a rank that runs out of data pads with zero-weight
  copies of its last batch. The zero weight makes those steps add
  nothing to any gradient while keeping every collective matched.
* Dense parameters (MLP, cross network, numeric embeddings) are wrapped by DDP, which averages
  their gradients with an all-reduce during ``backward``.
* Embedding tables are *not* DDP parameters: they are row-sparse (``layers.RowSparseEmbedding``,
  ``requires_grad=False``, no dense gradient), so an all-reduce over a [2^20, D] table per step
  would defeat them. Instead ``SparseGradSync`` all-gathers each rank's ``(unique ids, row
  gradients)``, sums the rows of ids that several ranks touched, divides by the world size (the
  same averaging DDP applies to dense gradients) and hands the merged rows to
  ``RowSparseAdam.apply_rows`` on every rank. Every rank applies the identical update to the
  identical rows in the identical order, so tables and Adam moments stay bit-identical across
  ranks without ever being broadcast.
* Rank 0 alone writes the artifact and registers the version; the other ranks wait for its
  outcome (``broadcast_object``) so that ``torchrun`` exits with one verdict.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

if TYPE_CHECKING:
    from reloop_service.training.layers import RowSparseEmbedding
    from reloop_service.training.optim import RowSparseAdam

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_TIMEOUT = timedelta(minutes=30)


# ------------------------------------------------------------------------------------------ context
@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job. A world of one is plain single-process training."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that writes artifacts, reports and registry rows."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True when there is more than one rank and a process group to talk to."""
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()


SINGLE = DistContext()


def launched_by_torchrun() -> bool:
    """torchrun (and ``torch.distributed.run``) set these for every worker it starts."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def backend_for(device: str) -> str:
    """``nccl`` for CUDA devices, ``gloo`` otherwise (CPU)."""
    return "nccl" if device.startswith("cuda") else "gloo"


def init_distributed(*, device: str | None = None, timeout: timedelta = DEFAULT_TIMEOUT) -> DistContext:
    """Join the process group described by torchrun's environment; a world of one without it.

    The device is ``cuda:<LOCAL_RANK>`` when CUDA is available (then the backend is ``nccl``),
    else ``cpu`` with ``gloo``.
    """
    if not launched_by_torchrun():
        return SINGLE
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    backend = backend_for(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timeout)
    log.info("rank %d/%d joined the %s process group on %s", rank, world, backend, device)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, backend=backend, device=device)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (idempotent)."""
    if ctx.world_size > 1 and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------ sharding
def shard(items: Sequence[T], *, rank: int, world_size: int) -> list[T]:
    """Round-robin share of ``items`` for ``rank``: disjoint, and together they are all of ``items``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size}")
    return list(items[rank::world_size])


@dataclass(frozen=True, order=True)
class RowGroup:
    """One row group of one Parquet file: the unit of data sharding."""

    path: str
    index: int
    num_rows: int


def list_row_groups(paths: Iterable[str], *, storage_options: dict[str, Any] | None = None) -> list[RowGroup]:
    """Every row group of every file, sorted by (path, index) so all ranks see the same list."""
    import pyarrow.parquet as pq

    from reloop_service.storage import filesystem

    groups: list[RowGroup] = []
    for path in sorted(set(paths)):
        fs, inner = filesystem(path, storage_options)
        with fs.open(inner, "rb") as fh:
            meta = pq.ParquetFile(fh).metadata
        groups.extend(RowGroup(path, i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups))
    return groups


def shard_row_groups(groups: Sequence[RowGroup], *, rank: int, world_size: int) -> list[RowGroup]:
    """This rank's row groups: a greedy balance by rows, deterministic on every rank.

    Largest groups first, each to the rank holding the fewest rows so far (ties to the lower
    rank). Disjoint and complete like ``shard``, but a day of uneven files splits evenly.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size}")
    load = [0] * world_size
    mine: list[RowGroup] = []
    for group in sorted(groups, key=lambda g: (-g.num_rows, g.path, g.index)):
        target = min(range(world_size), key=lambda r: (load[r], r))
        load[target] += group.num_rows
        if target == rank:
            mine.append(group)
    return sorted(mine)


# ------------------------------------------------------------------------------------- collectives
def agree_steps(local_steps: int, ctx: DistContext) -> int:
    """The step count every rank runs: the largest of the ranks' own counts (all-reduce MAX)."""
    if not ctx.active:
        return local_steps
    t = torch.tensor([local_steps], dtype=torch.int64, device=_comm_device(ctx))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def all_reduce_sum(values: Sequence[float], ctx: DistContext) -> list[float]:
    """Sum a few numbers over ranks (row counts, loss sums) in float64."""
    if not ctx.active:
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64, device=_comm_device(ctx))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu().tolist()]


def broadcast_object(obj: T | None, ctx: DistContext, *, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (picklable objects: outcomes, configs, small specs)."""
    if not ctx.active:
        assert obj is not None
        return obj
    box: list[Any] = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(box, src=src, device=torch.device(_comm_device(ctx)))
    return box[0]  # type: ignore[no-any-return]


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        dist.barrier()


def all_gather_rows(tensor: Tensor, ctx: DistContext) -> list[Tensor]:
    """All-gather tensors whose first dimension differs by rank; rank order is kept.

    tensor [N_r, ...] -> list of world_size tensors [N_0, ...], …, [N_{W-1}, ...].
    """
    if not ctx.active:
        return [tensor]
    device = _comm_device(ctx)
    local = tensor.to(device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], dtype=torch.int64, device=device))
    counts = [int(n.item()) for n in sizes]
    longest = max(counts)
    padded = local.new_zeros((longest, *local.shape[1:]))
    padded[: local.shape[0]] = local
    gathered = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, padded)
    return [g[:n].to(tensor.device) for g, n in zip(gathered, counts, strict=True)]


def _comm_device(ctx: DistContext) -> str:
    return ctx.device if ctx.backend == "nccl" else "cpu"


# ------------------------------------------------------------------------- row-sparse embeddings
class SparseGradSync:
    """Keeps row-sparse embedding tables identical across ranks (see the module docstring).

    Call ``step()`` after ``backward`` and instead of ``RowSparseAdam.step()``. Tables of the same
    width travel together: ids are offset into one id space, so each step costs three all-gathers
    per table width (sizes, ids, rows), whatever the number of fields.
    """

    def __init__(
        self, tables: Sequence[RowSparseEmbedding], optimizer: RowSparseAdam, ctx: DistContext
    ) -> None:
        self.tables = list(tables)
        self.optimizer = optimizer
        self.ctx = ctx
        self._groups: dict[int, list[tuple[int, RowSparseEmbedding]]] = {}
        for table in self.tables:
            members = self._groups.setdefault(table.dim, [])
            offset = members[-1][0] + members[-1][1].num_rows if members else 0
            members.append((offset, table))
        self.rows_exchanged = 0

    @torch.no_grad()
    def step(self, *, contribute: bool = True) -> None:
        """Merge every rank's row gradients and apply the same Adam update on every rank.

        A rank on a zero-weight padding step passes ``contribute=False``: it still takes part in
        the collectives but offers no rows, so rows only its padding batch looked up are not
        touched (lazy Adam would otherwise move them on momentum alone and bump their step count).
        """
        from reloop_service.training.optim import coalesce_rows

        for dim, members in self._groups.items():
            ids_parts: list[Tensor] = []
            grad_parts: list[Tensor] = []
            for offset, table in members:
                for ids, grads in table.collect_grads():
                    if contribute:
                        ids_parts.append(ids + offset)
                        grad_parts.append(grads)
            weight = members[0][1].weight
            if ids_parts:
                ids, grads = coalesce_rows(torch.cat(ids_parts), torch.cat(grad_parts))
            else:
                ids = torch.empty(0, dtype=torch.int64, device=weight.device)
                grads = weight.new_zeros((0, dim))
            if self.ctx.active:
                all_ids = torch.cat(all_gather_rows(ids, self.ctx))
                all_grads = torch.cat(all_gather_rows(grads, self.ctx))
                self.rows_exchanged += int(all_ids.shape[0])
                if all_ids.numel():
                    ids, grads = coalesce_rows(all_ids, all_grads)
                    grads.div_(self.ctx.world_size)
                else:
                    ids, grads = all_ids, all_grads
            if ids.numel() == 0:
                continue
            for offset, table in members:
                inside = (ids >= offset) & (ids < offset + table.num_rows)
                if bool(inside.any()):
                    self.optimizer.apply_rows(table, ids[inside] - offset, grads[inside], unique=True)

    def zero_grad(self) -> None:
        for table in self.tables:
            table.clear_pending()


def wrap_dense(model: nn.Module, ctx: DistContext) -> nn.Module:
    """DDP over the dense parameters; embedding tables (``requires_grad=False``) are left out.

    DDP broadcasts rank 0's parameters and buffers at construction, so every rank starts equal
    even if their initial weights differed.
    """
    if not ctx.active:
        return model
    device_ids = [torch.device(ctx.device).index] if ctx.device.startswith("cuda") else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def state_hash(module: nn.Module | dict[str, Tensor]) -> str:
    """sha256 over a state dict's names and exact tensor bytes: equal hashes, equal parameters."""
    state = module.state_dict() if isinstance(module, nn.Module) else module
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(
            tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16 else tensor.float().numpy().tobytes()
        )
    return digest.hexdigest()
