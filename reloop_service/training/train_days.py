"""Train on days of click logs from storage: ingest, hold out a hash sample, fit, train, evaluate.

This is what ``reloop train`` runs, with the cycle's split (``data.split``) and recipe
(``training.recipe``), so a model trained by hand is trained as the cycle would train it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import pyarrow as pa

from reloop_service.data.ingest import DayLog, IngestReport, open_days
from reloop_service.data.spec import FeatureSpec
from reloop_service.data.split import holdout_mask
from reloop_service.data.transforms import fit_numeric
from reloop_service.training.checkpoint import Checkpoint
from reloop_service.training.predict import Predictor
from reloop_service.training.trainer import PRIOR_COLUMN, TrainConfig, TrainResult, train

log = logging.getLogger(__name__)

DEFAULT_HOLDOUT = 0.1


@dataclass
class DaysTrainResult:
    """``train``'s result plus what ingestion and the hold-out split saw."""

    result: TrainResult
    ingest: IngestReport
    days: list[date]
    train_rows: int
    eval_rows: int
    prior_source: str  # "checkpoint" or "none"


def day_range(end: date, days: int) -> list[date]:
    """The ``days`` consecutive days ending with ``end``."""
    if days < 1:
        raise ValueError(f"--days must be at least 1, got {days}")
    return [end - timedelta(days=days - 1 - i) for i in range(days)]


def _split(
    daylog: DayLog, impression_id: str, fraction: float
) -> tuple[Callable[[], Iterator[pa.RecordBatch]], Callable[[], Iterator[pa.RecordBatch]]]:
    """Re-iterable (training, holdout) streams by ``data.split.holdout_mask``, the cycle's own split.

    Streaming like the day log itself (a row's side is a pure function of its id): a day is never
    held in memory whole.
    """

    def side(held_out: bool) -> Callable[[], Iterator[pa.RecordBatch]]:
        def stream() -> Iterator[pa.RecordBatch]:
            for batch in daylog.iter_batches():
                held = holdout_mask(batch.column(impression_id), fraction)
                part = batch.filter(pa.array(held if held_out else ~held))
                if part.num_rows:
                    yield part

        return stream

    return side(False), side(True)


def _count(stream: Callable[[], Iterator[pa.RecordBatch]]) -> int:
    return sum(b.num_rows for b in stream())


def _with_prior(
    stream: Callable[[], Iterator[pa.RecordBatch]], predictor: Predictor
) -> Callable[[], Iterator[pa.RecordBatch]]:
    """Attach ``prior_ctr``: the warm-start checkpoint's own prediction for every row."""

    def with_prior() -> Iterator[pa.RecordBatch]:
        for batch in stream():
            prior = pa.array(predictor.predict_batch(batch), pa.float64())
            yield batch.append_column(PRIOR_COLUMN, prior)

    return with_prior


def train_days(
    *,
    logs_uri: str,
    end_day: date,
    days: int = 1,
    spec: FeatureSpec,
    config: TrainConfig | Callable[[int], TrainConfig],
    init: Checkpoint | None = None,
    holdout: float = DEFAULT_HOLDOUT,
    prior_from_checkpoint: bool = True,
    storage_options: dict[str, Any] | None = None,
    progress: bool | None = None,
    on_batch: Callable[[int, int, float], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> DaysTrainResult:
    """Train on ``days`` days of logs ending ``end_day``; a ``holdout`` hash sample of the rows (the
    cycle's split, ``data.split``) is the evaluation slice whose metrics go into the checkpoint.

    ``config`` may be a function of the training row count (``training.recipe``: the batch size
    scales with the day). Without ``init`` the spec's numeric statistics are fitted on the training
    rows and frozen. With ``init`` and ``prior_from_checkpoint`` every row's prior is the checkpoint's
    own prediction, so ``reloop``/``distill`` have a prior to correct against. ``on_total(rows)`` is
    told the training rows of all epochs before the first step and ``on_batch`` is the trainer's
    per-step callback: together they drive ``reloop train``'s progress bar.
    """
    day_list = day_range(end_day, days)
    if init is not None:
        spec = init.feature_spec()
    daylog = open_days(logs_uri, day_list, spec, storage_options=storage_options, batch_size=65536)
    train_stream, eval_stream = _split(daylog, spec.impression_id, holdout)
    train_count = _count(train_stream)
    eval_count = daylog.report.rows_valid - train_count
    if train_count == 0:
        raise ValueError(f"no training rows left after holding out {holdout:.0%} of {eval_count}")

    if not spec.is_fitted:
        spec = fit_numeric(spec, train_stream())
    prior_source = "none"
    stream: Callable[[], Iterator[pa.RecordBatch]] = train_stream
    if init is not None and prior_from_checkpoint:
        stream = _with_prior(train_stream, Predictor(init))
        prior_source = "checkpoint"
    cfg = config(train_count) if callable(config) else config
    if on_total is not None:
        on_total(train_count * cfg.epochs)
    result = train(
        config=cfg,
        spec=spec,
        batches=stream,
        init=init,
        first_day=day_list[0],
        last_day=day_list[-1],
        eval_batches=eval_stream if eval_count else None,
        progress=progress,
        on_batch=on_batch,
    )
    eval_rows = int(eval_count)
    result.checkpoint.train_config["run"] = {
        "days": [d.isoformat() for d in day_list],
        "holdout": holdout,
        "holdout_split": "hash of impression id",
        "prior_source": prior_source,
        "ingest": daylog.report.to_dict(),
    }
    return DaysTrainResult(
        result=result,
        ingest=daylog.report,
        days=day_list,
        train_rows=result.rows,
        eval_rows=eval_rows,
        prior_source=prior_source,
    )
