"""The incremental trainer: warm start from a checkpoint, train epochs over a day's record batches.

``train`` is deterministic for a seed: the model is initialised from ``torch.manual_seed(seed)``,
rows are shuffled by a seeded permutation (``shuffle_rebatch``: logs arrive sorted by time, and a model
trained in file order ends every day on its last hours) and every CPU op it uses is deterministic.
Dense parameters use ``torch.optim.Adam``; embedding tables use
``optim.RowSparseAdam``, which touches only the rows of each batch. Turning record batches into
tensors (hashing, numeric scaling) runs on a background thread one batch ahead of the optimizer
(pyarrow and the hash release the GIL), so data preparation overlaps the model's compute.

Batches may carry a nullable float column ``prior_ctr``: the serving version's prediction for the
row. Null (or NaN) means no prior; ``distill``/``reloop`` treat such rows as plain BCE and the
trainer reports what fraction of rows had one (``coverage``).
"""

from __future__ import annotations

import copy
import logging
import math
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import date
from typing import TYPE_CHECKING, Any, Final, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from reloop_service.data.spec import FeatureSpec
from reloop_service.data.transforms import FeatureBatch, labels_of, transform
from reloop_service.training.checkpoint import Checkpoint
from reloop_service.training.losses import USES_PRIOR, get_loss, resolve_params
from reloop_service.training.models import CTRModel, build_model
from reloop_service.training.optim import RowSparseAdam

if TYPE_CHECKING:
    from reloop_service.training.distributed import DistContext

log = logging.getLogger(__name__)

PRIOR_COLUMN: Final = "prior_ctr"
T = TypeVar("T")


class TrainError(ValueError):
    """Training cannot run on this input (no rows, a bad prior column, a mismatched checkpoint)."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train one version; stored in its checkpoint (``to_dict``)."""

    model: str = "dnn"
    model_args: dict[str, Any] = field(default_factory=dict)
    loss: str = "reloop"
    loss_params: dict[str, float] = field(default_factory=dict)
    # Adam learning rates (the recipe's, chosen on the replays' selection bins): the tables' rows are
    # updated only when they appear, so they take a larger step than the MLP.
    lr: float = 1e-3
    sparse_lr: float = 5e-2
    epochs: int = 1
    batch_size: int = 4096
    seed: int = 0
    threads: int | None = None
    # Rows are permuted within windows of this many rows (the whole day up to it): a full shuffle for
    # any day that fits, a bounded-memory one beyond.
    shuffle: bool = True
    shuffle_buffer_rows: int = 1_000_000
    # Both learning rates decay linearly over the run's planned steps to this fraction of their
    # start (1.0: constant). At a constant rate a day ends wherever its last noisy batches left the
    # rows every batch touches (hour, device, position...): on the simulator a model just trained on
    # a day predicted its CTR at 0.79-1.18 of the truth, 0.89-1.12 decayed to a tenth
    # (scripts/diagnose_simulator.py; docs/benchmarks.md, "Model quality").
    lr_final_fraction: float = 1.0
    # Where the decay starts (a fraction of the configured rates): a run that continues another
    # one's schedule (the cycle's post-gate pass over the holdout) starts where that one ended.
    lr_start_fraction: float = 1.0
    # After the ``epochs`` passes, this many more over the embedding tables alone, at
    # ``settle_fraction`` x their rate, the MLP frozen (the recipe's: one after every training). On
    # ml100k's full retrain it gained 0.0018 pooled AUC on the selection bins (4 seeds, bootstrap
    # interval over users excluding 0) at the same logloss; the same pass with the MLP at 0.1x
    # too gained as much AUC but lost 0.007 logloss (docs/benchmarks.md, "Model quality").
    settle_epochs: int = 0
    settle_fraction: float = 0.1
    # Whether the MLP's dropout stays on in the settle passes (the MLP is frozen there, so its
    # dropout only adds noise to the tables' gradients; off is an experiment, docs/benchmarks.md).
    settle_dropout: bool = True
    # Rows per epoch this run expects (the cycle knows its staged day's count); ``None``: counted by
    # one extra read of ``batches()`` when the rates decay.
    planned_rows: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.lr <= 0 or self.sparse_lr <= 0:
            raise ValueError(f"learning rates must be positive, got lr={self.lr}, sparse_lr={self.sparse_lr}")
        if self.shuffle_buffer_rows < 1:
            raise ValueError(f"shuffle_buffer_rows must be at least 1, got {self.shuffle_buffer_rows}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        if not 0.0 <= self.lr_final_fraction <= 1.0:
            raise ValueError(f"lr_final_fraction must be within [0, 1], got {self.lr_final_fraction}")
        if not 0.0 < self.lr_start_fraction <= 1.0:
            raise ValueError(f"lr_start_fraction must be within (0, 1], got {self.lr_start_fraction}")
        if self.settle_epochs < 0:
            raise ValueError(f"settle_epochs must not be negative, got {self.settle_epochs}")
        if not 0.0 < self.settle_fraction <= 1.0:
            raise ValueError(f"settle_fraction must be within (0, 1], got {self.settle_fraction}")
        if self.planned_rows is not None and self.planned_rows < 0:
            raise ValueError(f"planned_rows must not be negative, got {self.planned_rows}")
        get_loss(self.loss)
        resolve_params(self.loss, self.loss_params)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Inverse of ``to_dict``; extra keys (a checkpoint's ``run`` notes) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class TrainResult:
    """What ``train`` produced and saw."""

    checkpoint: Checkpoint
    coverage: float  # fraction of training rows that had a prior prediction
    first_batch_loss: float
    losses: list[float]  # one per optimizer step, in order
    rows: int  # training rows in one epoch
    steps: int
    notes: list[str] = field(default_factory=list)  # things the user should be told


def rebatch(batches: Iterable[pa.RecordBatch | pa.Table], size: int) -> Iterator[pa.Table]:
    """Re-cut a stream of record batches into tables of exactly ``size`` rows (the last may be short)."""
    pending: list[pa.RecordBatch] = []
    have = 0
    for item in batches:
        parts = item.to_batches() if isinstance(item, pa.Table) else [item]
        for rb in parts:
            offset = 0
            while offset < rb.num_rows:
                take = min(size - have, rb.num_rows - offset)
                pending.append(rb.slice(offset, take))
                have += take
                offset += take
                if have == size:
                    yield pa.Table.from_batches(pending)
                    pending, have = [], 0
    if have:
        yield pa.Table.from_batches(pending)


def shuffle_rebatch(
    batches: Iterable[pa.RecordBatch | pa.Table], size: int, *, seed: int, buffer_rows: int
) -> Iterator[pa.Table]:
    """Tables of ``size`` rows in a seeded random order: windows of ``buffer_rows`` rows are permuted.

    Rows left over after a window's full batches join the next window, so every batch but the very
    last has exactly ``size`` rows. The permutation depends only on ``seed`` and the stream.
    """
    rng = np.random.default_rng(seed)
    window = max(buffer_rows, size)
    pending: list[pa.Table] = []
    have = 0

    def permuted(tables: list[pa.Table]) -> pa.Table:
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        return table.take(pa.array(rng.permutation(table.num_rows)))

    for item in batches:
        table = item if isinstance(item, pa.Table) else pa.Table.from_batches([item])
        if table.num_rows == 0:
            continue
        pending.append(table)
        have += table.num_rows
        if have >= window:
            mixed = permuted(pending)
            full = (mixed.num_rows // size) * size
            for start in range(0, full, size):
                yield mixed.slice(start, size)
            rest = mixed.slice(full)
            pending, have = ([rest], rest.num_rows) if rest.num_rows else ([], 0)
    if have:
        mixed = permuted(pending)
        for start in range(0, mixed.num_rows, size):
            yield mixed.slice(start, size)


def prior_of(
    table: pa.Table | pa.RecordBatch, id_column: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``prior_ctr`` as (probs FloatTensor [B], mask BoolTensor [B]); all-False mask without the column.

    Null and NaN mean "no prior". A value outside [0, 1] is an error naming the column and row.
    """
    n = table.num_rows
    if PRIOR_COLUMN not in table.column_names:
        return torch.zeros(n), torch.zeros(n, dtype=torch.bool)
    col = table.column(PRIOR_COLUMN)
    if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type) or pa.types.is_null(col.type)):
        raise TrainError(f"column {PRIOR_COLUMN!r} must be numeric (the prior CTR), got {col.type}")
    values = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
    values = np.asarray(values, dtype=np.float64)
    mask = ~np.isnan(values)
    bad = mask & ((values < 0.0) | (values > 1.0))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        # Rows are shuffled by now: name the impression, which finds the row in the logs.
        where = f"row {row}"
        if id_column is not None and id_column in table.column_names:
            where = f"impression {table.column(id_column)[row].as_py()!r}"
        raise TrainError(f"column {PRIOR_COLUMN!r}: {where} has {values[row]}, not a probability in [0, 1]")
    probs = np.where(mask, values, 0.0).astype(np.float32)
    return torch.from_numpy(probs), torch.from_numpy(mask)


@dataclass
class _Prepared:
    features: FeatureBatch
    labels: torch.Tensor
    prior: torch.Tensor
    mask: torch.Tensor


def _prepare(spec: FeatureSpec, table: pa.Table) -> _Prepared:
    prior, mask = prior_of(table, spec.impression_id)
    return _Prepared(transform(spec, table), labels_of(spec, table).to(torch.float32), prior, mask)


_DONE = object()


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Produce ``items`` on a background thread, ``depth`` ahead; exceptions re-raise in the consumer."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as exc:  # handed to the consumer
            q.put(exc)

    thread = threading.Thread(target=work, name="reloop-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def _start_at_base_rate(
    model: CTRModel,
    spec: FeatureSpec,
    batches: Callable[[], Iterable[pa.RecordBatch | pa.Table]],
    base_rate: float | None,
) -> None:
    """Set the output bias to logit(click rate) so a new model starts as the constant predictor.

    From a zero bias a model starts at p = 0.5; on a 5% CTR day Adam needs hundreds of steps just to
    move the bias to -2.9, which a small day does not have (a 3,000-row cold start ended with
    logloss 0.50 against the constant's 0.29). Starting there, every step is spent on the features.
    """
    if base_rate is None:
        rows = positives = 0
        for item in batches():
            y = labels_of(spec, item)
            rows += len(y)
            positives += int(y.sum())
        base_rate = positives / rows if rows else 0.5
    p = min(max(float(base_rate), 1e-4), 1 - 1e-4)
    with torch.no_grad():
        model.output_bias().fill_(float(np.log(p / (1 - p))))


def _epoch_tables(
    config: TrainConfig, batches: Iterable[pa.RecordBatch | pa.Table], epoch: int, dist: DistContext | None
) -> Iterator[pa.Table]:
    """One epoch's training tables: shuffled with a seed of (seed, epoch, rank), or in stream order."""
    if not config.shuffle:
        return rebatch(batches, config.batch_size)
    rank = dist.rank if dist is not None else 0
    seed = int(np.random.SeedSequence([config.seed, epoch, rank]).generate_state(1)[0])
    return shuffle_rebatch(batches, config.batch_size, seed=seed, buffer_rows=config.shuffle_buffer_rows)


class LinearDecay:
    """Scales every optimizer group's learning rate from ``start`` x to ``final`` x it over ``steps``.

    The groups' own ``lr`` is restored by ``restore`` so a checkpoint stores the configured rates
    and the next warm start begins at them.
    """

    def __init__(
        self,
        optimizers: Sequence[torch.optim.Optimizer | None],
        *,
        final: float,
        steps: int,
        start: float = 1.0,
    ):
        self.start = start
        self.final = final
        self.steps = max(1, steps)
        self.groups = [(g, float(g["lr"])) for opt in optimizers if opt is not None for g in opt.param_groups]

    def factor(self, step: int) -> float:
        """The multiplier at optimizer step ``step`` (0-based): ``start`` at 0, ``final`` from ``steps``."""
        return self.start + (self.final - self.start) * min(1.0, step / self.steps)

    def apply(self, step: int) -> None:
        f = self.factor(step)
        for group, base in self.groups:
            group["lr"] = base * f

    def restore(self) -> None:
        for group, base in self.groups:
            group["lr"] = base


def steps_for(config: TrainConfig, rows: int) -> int:
    """Optimizer steps ``config`` takes over ``rows`` rows: ``ceil(rows / batch) x epochs``."""
    return math.ceil(rows / config.batch_size) * config.epochs


def planned_steps(config: TrainConfig, batches: Callable[[], Iterable[pa.RecordBatch | pa.Table]]) -> int:
    """Optimizer steps the run will take (its rows counted by one read when not planned)."""
    rows = config.planned_rows
    if rows is None:
        rows = sum(b.num_rows for b in batches())
    return steps_for(config, rows)


def _want_progress(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


def _warm_model(config: TrainConfig, spec: FeatureSpec, init: Checkpoint | None) -> CTRModel:
    if init is None:
        return build_model(config.model, spec, **config.model_args)
    if init.model_name != config.model:
        raise TrainError(f"cannot warm-start a {config.model!r} model from a {init.model_name!r} checkpoint")
    if init.feature_spec().fingerprint() != spec.fingerprint():
        raise TrainError(
            "the feature spec differs from the checkpoint's (warm start needs the same spec: "
            "pass checkpoint.feature_spec())"
        )
    model = init.build_model()
    return model


def train(
    *,
    config: TrainConfig,
    spec: FeatureSpec | None,
    batches: Callable[[], Iterable[pa.RecordBatch | pa.Table]],
    init: Checkpoint | None = None,
    first_day: date | None = None,
    last_day: date | None = None,
    eval_batches: Callable[[], Iterable[pa.RecordBatch | pa.Table]] | None = None,
    progress: bool | None = None,
    dist: DistContext | None = None,
    on_batch: Callable[[int, int, float], None] | None = None,
    base_rate: float | None = None,
) -> TrainResult:
    """Train ``config.epochs`` passes over ``batches()`` (called once per epoch) and checkpoint the result.

    ``config.settle_epochs`` more passes follow that update the embedding tables alone, at
    ``config.settle_fraction`` x their rate (the MLP frozen, its optimizer untouched).

    ``spec`` must be fitted (numeric statistics frozen); ``None`` means the warm-start checkpoint's.
    ``dist`` (set by ``training.distributed``) trains this rank's shard in a DDP group: every rank
    steps in lockstep and ends with identical weights; ``rows`` then counts the rows of all ranks.
    ``init`` warm-starts weights and both optimizers' states. ``first_day``/``last_day`` set the data
    watermark (a warm start keeps the checkpoint's first day). ``eval_batches`` are scored after
    training and their metrics stored in the checkpoint. ``progress=None`` shows a bar only when
    stderr is a terminal. ``on_batch(step, rows, loss)`` is called after every optimizer step
    (heartbeats, benchmarks). A model trained from scratch starts at the constant predictor: its
    output bias is logit(``base_rate``), the training rows' click rate (counted here when not given).
    """
    if spec is None:
        if init is None:
            raise TrainError("train needs a feature spec or a checkpoint to warm-start from")
        spec = init.feature_spec()
    if not spec.is_fitted:
        raise TrainError("the feature spec's numeric statistics are not fitted (run fit_numeric first)")
    loss_fn = get_loss(config.loss)
    loss_params = resolve_params(config.loss, config.loss_params)

    previous_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        torch.manual_seed(config.seed)
        model = _warm_model(config, spec, init)
        if init is None:
            _start_at_base_rate(model, spec, batches, base_rate)
        model.train()
        dense_params = model.dense_parameters()
        dense_opt = torch.optim.Adam(dense_params, lr=config.lr) if dense_params else None
        sparse_opt = (
            RowSparseAdam(model.sparse_tables(), lr=config.sparse_lr) if model.sparse_tables() else None
        )
        if init is not None:
            _load_optimizers(init, dense_opt, sparse_opt, config)
        decay = (
            LinearDecay(
                [dense_opt, sparse_opt],
                start=config.lr_start_fraction,
                final=config.lr_final_fraction,
                steps=planned_steps(config, batches),
            )
            if min(config.lr_start_fraction, config.lr_final_fraction) < 1.0
            else None
        )
        parallel = None
        if dist is not None and dist.world_size > 1:
            from reloop_service.training.distributed import DataParallel

            parallel = DataParallel(model, tables=model.sparse_tables(), sparse_opt=sparse_opt, ctx=dist)
        forward = parallel.forward_model if parallel is not None else model

        losses: list[float] = []
        rows = covered = step = 0
        settle = _Settle(
            sparse_opt,
            config.settle_fraction,
            model=None if config.settle_dropout else model,
            # Frozen MLP: skip its weight gradients (the tables' are the same). Not under DDP, whose
            # reducer waits for a gradient of every parameter it was built with.
            frozen=dense_params if parallel is None else [],
        )
        bar = _Progress(enabled=_want_progress(progress), epochs=config.epochs + config.settle_epochs)
        with bar:
            for epoch in range(config.epochs + config.settle_epochs):
                settling = epoch >= config.epochs  # the tables alone, at settle_fraction x their rate
                if settling:
                    settle.start()
                epoch_rows = epoch_covered = 0
                prepared = prefetch(_prepare(spec, t) for t in _epoch_tables(config, batches(), epoch, dist))
                # Under DDP a rank out of data repeats a batch with zero weight (real=False).
                steps = parallel.lockstep(prepared) if parallel is not None else ((p, True) for p in prepared)
                for item, real in steps:
                    if decay is not None and not settling:
                        decay.apply(step)
                    step += 1
                    if dense_opt is not None:
                        dense_opt.zero_grad(set_to_none=True)
                    if sparse_opt is not None:
                        sparse_opt.zero_grad()
                    logits = forward(item.features)
                    loss = loss_fn(logits, item.labels, item.prior, item.mask, loss_params)
                    (loss if real else loss * 0.0).backward()
                    if dense_opt is not None and not settling:
                        dense_opt.step()
                    if parallel is not None:
                        parallel.sparse_step(real=real)
                    elif sparse_opt is not None:
                        sparse_opt.step()
                    if not real:
                        continue
                    value = float(loss.detach())
                    losses.append(value)
                    n = len(item.labels)
                    epoch_rows += n
                    epoch_covered += int(item.mask.sum())
                    bar.advance(epoch, n, value)
                    if on_batch is not None:
                        on_batch(len(losses), n, value)
                if epoch == 0:
                    rows, covered = epoch_rows, epoch_covered
                elif epoch_rows != rows:
                    raise TrainError(
                        f"epoch {epoch + 1} saw {epoch_rows} rows, epoch 1 saw {rows}: batches() "
                        "must replay the same data"
                    )
        settle.restore()
        if decay is not None:
            decay.restore()
        if parallel is not None:
            rows, covered = parallel.totals(rows, covered)
        if rows == 0:
            raise TrainError("no training rows: the batches were empty")
        coverage = covered / rows
        notes: list[str] = []
        if config.loss in USES_PRIOR and covered == 0:
            notes.append(f"loss {config.loss!r}: no prior predictions in the data, so it trains as BCE")
        elif config.loss in USES_PRIOR:
            notes.append(
                f"loss {config.loss!r}: prior coverage {coverage:.1%} (rows without one train as BCE)"
            )
        for note in notes:
            log.info(note)

        model.eval()
        checkpoint = Checkpoint(
            model_name=config.model,
            model_args=model.model_args,
            # No copies (they cost ~1 s on 2^23-row tables and their Adam state): the model and the
            # optimizers end here, the checkpoint takes over their tensors (evaluation only reads).
            state_dict={k: v.detach() for k, v in model.state_dict().items()},
            spec=spec.to_dict(),
            loss=config.loss,
            loss_params=loss_params,
            seed=config.seed,
            first_day=(init.first_day if init is not None and init.first_day else first_day),
            last_day=last_day,
            optimizer_state={
                "dense": dense_opt.state_dict() if dense_opt is not None else None,
                "sparse": sparse_opt.state_dict() if sparse_opt is not None else None,
            },
            train_config=config.to_dict(),
            metrics={
                "train_rows": rows,
                "prior_coverage": coverage,
                "final_loss": losses[-1] if losses else float("nan"),
            },
        )
        if eval_batches is not None:
            from reloop_service.training.predict import evaluate_checkpoint

            checkpoint.metrics.update(evaluate_checkpoint(checkpoint, eval_batches(), model=model))
        return TrainResult(
            checkpoint=checkpoint,
            coverage=coverage,
            first_batch_loss=losses[0],
            losses=losses,
            rows=rows,
            steps=len(losses),
            notes=notes,
        )
    finally:
        torch.set_num_threads(previous_threads)


class _Settle:
    """The settle passes' rate: the tables' groups at ``fraction`` x their rate, restored after;
    ``frozen`` parameters compute no gradient meanwhile; with ``model`` given, its dropout layers
    are off for the settle passes too."""

    def __init__(
        self,
        sparse_opt: RowSparseAdam | None,
        fraction: float,
        *,
        model: torch.nn.Module | None,
        frozen: Sequence[torch.nn.Parameter],
    ) -> None:
        self.fraction = fraction
        self.groups = [(g, float(g["lr"])) for g in sparse_opt.param_groups] if sparse_opt is not None else []
        layers = model.modules() if model is not None else ()
        self.dropouts = [m for m in layers if isinstance(m, torch.nn.Dropout)]
        self.frozen = list(frozen)
        self.started = False

    def start(self) -> None:
        if not self.started:
            for group, base in self.groups:
                group["lr"] = base * self.fraction
            for layer in self.dropouts:
                layer.eval()
            for p in self.frozen:
                p.requires_grad_(False)
            self.started = True

    def restore(self) -> None:
        if self.started:
            for group, base in self.groups:
                group["lr"] = base
            for layer in self.dropouts:
                layer.train()
            for p in self.frozen:
                p.requires_grad_(True)
            self.started = False


def _load_optimizers(
    init: Checkpoint,
    dense_opt: torch.optim.Optimizer | None,
    sparse_opt: RowSparseAdam | None,
    config: TrainConfig,
) -> None:
    """Restore both optimizers' states from ``init``, then apply this run's learning rates."""
    state = init.optimizer_state or {}
    for opt, key, lr in ((dense_opt, "dense", config.lr), (sparse_opt, "sparse", config.sparse_lr)):
        if opt is None:
            continue
        if state.get(key):
            # Deep copy: torch keeps the given tensors as live state, which would let this run
            # mutate the warm-start checkpoint in place.
            opt.load_state_dict(copy.deepcopy(state[key]))
        for group in opt.param_groups:
            group["lr"] = lr


class _Progress:
    """A rich progress bar on interactive terminals; nothing otherwise."""

    def __init__(self, *, enabled: bool, epochs: int) -> None:
        self.enabled = enabled
        self.epochs = epochs
        self._progress: Any = None
        self._tasks: dict[int, Any] = {}

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]train[/] epoch {task.fields[epoch]}"),
                TextColumn("{task.completed:,.0f} rows"),
                TextColumn("loss {task.fields[loss]:.4f}"),
                TimeElapsedColumn(),
                transient=False,
            )
            self._progress.__enter__()
        return self

    def advance(self, epoch: int, rows: int, loss: float) -> None:
        if self._progress is None:
            return
        if epoch not in self._tasks:
            self._tasks[epoch] = self._progress.add_task(
                "train", total=None, epoch=f"{epoch + 1}/{self.epochs}", loss=loss
            )
        self._progress.update(self._tasks[epoch], advance=rows, loss=loss)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
