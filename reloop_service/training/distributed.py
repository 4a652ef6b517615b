"""Data-parallel training with PyTorch's own engines: ``torchrun`` + DistributedDataParallel.

How a cycle trains on N processes (one host with ``reloop cycle run --nproc N``, or many hosts with
``torchrun … -m reloop_service.cycle.torchrun``, the cycle's entry point, which hands ``DDPTrainer``
to the cycle):

* Process group: ``gloo`` on CPU, ``nccl`` when every rank has a GPU. Rank, world size and the
  rendezvous come from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``…).
* Data: each rank reads a disjoint shard of the day's Parquet row groups (``shard_row_groups``:
  every (file, row group) of the day, dealt out largest first to the rank with the fewest rows,
  the same deal on every rank, so a day of one big file still splits evenly). Every rank takes
  part in the same number of optimizer steps: the ranks agree on the largest local step count
  (``agree_steps``, an all-reduce MAX) and a rank that runs out of data pads with zero-weight
  copies of its last batch. The zero weight makes those steps add
  nothing to any gradient while keeping every collective matched.
* The configured batch size is the global one: each rank steps on ``ceil(batch_size / N)`` rows,
  so a step sees as many rows as in one process and the metrics match a single-process run.
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
  outcome (``DDPTrainer.follow``/``finish``) so that ``torchrun`` exits with one verdict.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

if TYPE_CHECKING:
    import pyarrow as pa

    from reloop_service.data.spec import FeatureSpec
    from reloop_service.training.checkpoint import Checkpoint
    from reloop_service.training.layers import RowSparseEmbedding
    from reloop_service.training.optim import RowSparseAdam
    from reloop_service.training.trainer import TrainConfig, TrainResult

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
    """Join the process group described by torchrun's environment, or use the one the caller has
    already joined (any ``init_method``, e.g. a file store); a world of one without either.

    The device is ``cuda:<LOCAL_RANK>`` when CUDA is available (then the backend is ``nccl``),
    else ``cpu`` with ``gloo``.
    """
    joined = dist.is_available() and dist.is_initialized()
    if not joined and not launched_by_torchrun():
        return SINGLE
    rank = dist.get_rank() if joined else int(os.environ["RANK"])
    world = dist.get_world_size() if joined else int(os.environ["WORLD_SIZE"])
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


# ----------------------------------------------------------------------------- the trainer's hook
class DataParallel:
    """What ``trainer.train`` uses when it runs on several ranks (``train(..., dist=ctx)``).

    ``forward_model`` is the DDP-wrapped model, ``lockstep`` keeps every rank stepping until the
    last one runs out of data (zero-weight padding), ``sparse_step`` replaces
    ``RowSparseAdam.step`` and ``totals`` sums the row counts over ranks.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        tables: Sequence[RowSparseEmbedding],
        sparse_opt: RowSparseAdam | None,
        ctx: DistContext,
    ) -> None:
        self.ctx = ctx
        has_dense = any(p.requires_grad for p in model.parameters())
        self.forward_model = wrap_dense(model, ctx) if has_dense else model
        self.sync = SparseGradSync(tables, sparse_opt, ctx) if sparse_opt is not None and tables else None
        self.padded_steps = 0

    def lockstep(self, items: Iterable[T]) -> Iterator[tuple[T, bool]]:
        """``(item, real)`` pairs until every rank is out of data; padding repeats a batch, ``real=False``.

        One tiny all-reduce per step decides whether anyone still has data. A rank whose shard was
        empty from the start pads with the first batch of the lowest rank that has one, sent once.
        """
        it = iter(items)
        last: T | None = next(it, None)
        pending = last
        # A rank with no data at all needs a batch to pad with: the lowest rank that has one sends it.
        have = all_gather_rows(torch.tensor([1 if last is not None else 0], dtype=torch.int64), self.ctx)
        flags = [int(h.item()) for h in have]
        if not any(flags):
            return
        if not all(flags):
            src = flags.index(1)
            template = broadcast_object(last if self.ctx.rank == src else None, self.ctx, src=src)
            if last is None:
                last = template
        while True:
            real = pending is not None
            if not self.ctx.active:
                if not real:
                    return
            else:
                t = torch.tensor([1 if real else 0], dtype=torch.int64, device=_comm_device(self.ctx))
                dist.all_reduce(t, op=dist.ReduceOp.SUM)
                if int(t.item()) == 0:
                    return
            if real:
                assert pending is not None
                last = pending
                yield pending, True
                pending = next(it, None)
            else:
                self.padded_steps += 1
                assert last is not None
                yield last, False

    def sparse_step(self, *, real: bool) -> None:
        if self.sync is not None:
            self.sync.step(contribute=real)

    def totals(self, *counts: int) -> list[int]:
        return [round(v) for v in all_reduce_sum([float(c) for c in counts], self.ctx)]


# ------------------------------------------------------------------------- a day on N ranks
@dataclass(frozen=True)
class StagedDay:
    """A day's training rows staged as one Parquet file (with ``prior_ctr``; the holdout is elsewhere)."""

    uri: str
    batch_size: int


@dataclass(frozen=True)
class TrainJob:
    """What rank 0 sends the other ranks for one training (plain data: it is pickled once)."""

    config: dict[str, Any]
    spec: dict[str, Any]
    init: bytes | None
    day: StagedDay
    first_day: date | None
    last_day: date | None
    base_rate: float | None = None  # every rank starts a new model from the same output bias


@dataclass(frozen=True)
class RankReport:
    """One rank's view of a data-parallel training: equal ``state_sha256`` on every rank proves they agree."""

    rank: int
    state_sha256: str
    row_groups: tuple[tuple[str, int], ...]
    steps: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "state_sha256": self.state_sha256,
            "row_groups": [list(g) for g in self.row_groups],
            "steps": self.steps,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RankReport:
        return cls(
            rank=int(d["rank"]),
            state_sha256=str(d["state_sha256"]),
            row_groups=tuple((str(p), int(i)) for p, i in d["row_groups"]),
            steps=int(d["steps"]),
        )


def iter_shard(
    day: StagedDay, groups: Sequence[RowGroup], *, storage_options: dict[str, Any] | None = None
) -> Iterator[pa.RecordBatch]:
    """The training rows of ``groups`` (this rank's row groups of the staged day), batch by batch."""
    import pyarrow.parquet as pq

    from reloop_service.storage import filesystem

    for path in sorted({g.path for g in groups}):
        wanted = [g.index for g in groups if g.path == path]
        fs, inner = filesystem(path, storage_options)
        with fs.open(inner, "rb") as fh:
            pf = pq.ParquetFile(fh)
            for batch in pf.iter_batches(batch_size=day.batch_size, row_groups=wanted):
                if batch.num_rows:
                    yield batch


@dataclass(frozen=True)
class DayJob:
    """One version to train on a staged day (what the cycle's train step hands its trainer)."""

    config: TrainConfig
    spec: FeatureSpec
    day: StagedDay
    batches: Callable[[], Iterable[pa.RecordBatch]]  # the staged rows, re-iterable (one process)
    init: Checkpoint | None
    first_day: date | None
    last_day: date | None
    base_rate: float | None  # a new model's output bias starts at logit(base_rate) on every rank


class DayTrainer(Protocol):
    """How the cycle trains one version on a staged day: in this process, or on every rank of a job."""

    @property
    def world_size(self) -> int: ...

    def train_day(self, job: DayJob) -> TrainResult: ...


@dataclass(frozen=True)
class LocalTrainer:
    """A world of one: ``trainer.train`` over the staged day's batches in this process."""

    world_size: int = 1

    def train_day(self, job: DayJob) -> TrainResult:
        from reloop_service.training.trainer import train

        return train(
            config=job.config,
            spec=job.spec,
            batches=job.batches,
            init=job.init,
            first_day=job.first_day,
            last_day=job.last_day,
            progress=False,
            base_rate=job.base_rate,
        )


class DDPTrainer:
    """Rank 0's trainer in a torchrun job: every rank trains its shard of the day in one DDP group.

    Rank 0 calls ``train_day`` (it sends the job to the other ranks, trains its own shard and
    returns the common result); the other ranks call ``follow()``, which trains each job rank 0
    sends until rank 0 calls ``finish(payload)``, and returns that payload. ``ranks`` holds every
    rank's report of the last training (state hash, row groups, steps), gathered on each rank.
    """

    def __init__(
        self, ctx: DistContext, *, staging_uri: str, storage_options: dict[str, Any] | None = None
    ) -> None:
        self.ctx = ctx
        self.staging_uri = staging_uri
        self.storage_options = storage_options
        self.ranks: tuple[RankReport, ...] = ()

    @property
    def world_size(self) -> int:
        return self.ctx.world_size

    def train_day(self, job: DayJob) -> TrainResult:
        from reloop_service.training.checkpoint import checkpoint_to_bytes

        # Each rank reads its own row groups of the staged file (``job.batches`` is this process's).
        config, day = job.config, job.day
        if not self.ctx.is_main:
            raise RuntimeError("only rank 0 starts a distributed training; other ranks follow()")
        # The configured batch is the global one: each rank takes its share, so a step sees about as
        # many rows as in one process and ``--nproc`` changes speed, not the optimisation.
        per_rank = dataclasses.replace(
            config,
            batch_size=max(1, math.ceil(config.batch_size / self.ctx.world_size)),
            planned_rows=(
                None if config.planned_rows is None else math.ceil(config.planned_rows / self.ctx.world_size)
            ),
        )
        sent = TrainJob(
            config=per_rank.to_dict(),
            spec=job.spec.to_dict(),
            init=checkpoint_to_bytes(job.init) if job.init is not None else None,
            day=self._shared_day(day),
            first_day=job.first_day,
            last_day=job.last_day,
            base_rate=job.base_rate,
        )
        broadcast_object(("train", sent), self.ctx)
        try:
            return self._run_job(sent)
        finally:
            if sent.day.uri != day.uri:
                _remove_staged(sent.day.uri, self.storage_options)

    def follow(self) -> Any:
        """Ranks other than 0: train every job rank 0 sends; returns what rank 0 passes to ``finish``."""
        while True:
            message: tuple[str, Any] = broadcast_object(None, self.ctx)
            kind, payload = message
            if kind == "train":
                result = self._run_job(payload)
                log.info("rank %d finished its shard: %d steps", self.ctx.rank, result.steps)
            elif kind == "done":
                return payload
            else:  # pragma: no cover - a protocol bug
                raise RuntimeError(f"unknown message from rank 0: {kind!r}")

    def finish(self, payload: Any) -> None:
        """Rank 0: release the followers with ``payload`` (the job's outcome)."""
        broadcast_object(("done", payload), self.ctx)

    def _shared_day(self, day: StagedDay) -> StagedDay:
        """On one host the staged file is shared as is; across hosts rank 0 puts it on shared storage."""
        import uuid

        import fsspec

        from reloop_service.storage import filesystem, join, write_atomic

        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(self.ctx.world_size)))
        protocol = fsspec.utils.get_protocol(day.uri)
        if local_world == self.ctx.world_size or protocol not in ("file", "local"):
            return day
        target = join(self.staging_uri, "_staging", uuid.uuid4().hex, "day.parquet")
        fs, inner = filesystem(target, self.storage_options)
        with open(day.uri, "rb") as fh:
            write_atomic(fs, inner, fh.read())
        log.info("staged the day at %s for %d ranks on several hosts", target, self.ctx.world_size)
        return StagedDay(uri=target, batch_size=day.batch_size)

    def _run_job(self, job: TrainJob) -> TrainResult:
        """Train this rank's shard of ``job`` in the DDP group (every rank runs this)."""
        from reloop_service.data.spec import FeatureSpec
        from reloop_service.training.checkpoint import checkpoint_from_bytes
        from reloop_service.training.trainer import TrainConfig, train

        ctx = self.ctx
        groups = list_row_groups([job.day.uri], storage_options=self.storage_options)
        mine = shard_row_groups(groups, rank=ctx.rank, world_size=ctx.world_size)
        log.info(
            "rank %d trains on %d of %d row groups (%d rows)",
            ctx.rank,
            len(mine),
            len(groups),
            sum(g.num_rows for g in mine),
        )
        result = train(
            config=TrainConfig.from_dict(job.config),
            spec=FeatureSpec.from_dict(job.spec),
            batches=lambda: iter_shard(job.day, mine, storage_options=self.storage_options),
            init=checkpoint_from_bytes(job.init) if job.init is not None else None,
            first_day=job.first_day,
            last_day=job.last_day,
            progress=False,
            dist=ctx,
            base_rate=job.base_rate,
        )
        mine_report = RankReport(
            rank=ctx.rank,
            state_sha256=state_hash(result.checkpoint.state_dict),
            row_groups=tuple((g.path, g.index) for g in mine),
            steps=result.steps,
        )
        gathered: list[Any] = [None] * ctx.world_size
        dist.all_gather_object(gathered, mine_report)
        self.ranks = tuple(gathered)
        return result


def _remove_staged(uri: str, storage_options: dict[str, Any] | None) -> None:
    from reloop_service.storage import filesystem

    try:
        fs, inner = filesystem(uri, storage_options)
        fs.rm(inner)
    except Exception as exc:  # cleanup must never fail a cycle
        log.warning("could not remove the staged day %s: %s", uri, exc)
