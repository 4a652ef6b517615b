"""Train on days of click logs from storage: ingest, hold out the latest rows, fit, train, evaluate.

This is what ``reloop train`` runs; it is a plain function so scripts and the cycle can call it too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reloop_service.data.ingest import DayLog, IngestReport, open_days
from reloop_service.data.spec import FeatureSpec
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
    holdout_from: str | None  # ISO event time from which rows were held out
    prior_source: str  # "checkpoint" or "none"


def day_range(end: date, days: int) -> list[date]:
    """The ``days`` consecutive days ending with ``end``."""
    if days < 1:
        raise ValueError(f"--days must be at least 1, got {days}")
    return [end - timedelta(days=days - 1 - i) for i in range(days)]


def holdout_cutoff(daylog: DayLog, event_time: str, fraction: float) -> int | None:
    """The event time (µs since epoch) from which the latest ``fraction`` of rows are held out.

    One streaming pass over the event-time column (8 bytes per row); None when nothing is held out.
    """
    if fraction <= 0:
        return None
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    times = [
        np.asarray(b.column(event_time).cast(pa.int64()).to_numpy(zero_copy_only=False))
        for b in daylog.iter_batches()
    ]
    all_times = np.concatenate(times) if times else np.zeros(0, dtype=np.int64)
    if all_times.size < 2:
        return None
    k = int(np.floor(all_times.size * (1.0 - fraction)))
    k = min(max(k, 1), all_times.size - 1)
    return int(np.partition(all_times, k)[k])


def _split(
    daylog: DayLog, event_time: str, cutoff: int | None, *, held_out: bool
) -> Callable[[], Iterator[pa.RecordBatch]]:
    """Re-iterable stream of the rows before (training) or from (evaluation) ``cutoff``."""

    def stream() -> Iterator[pa.RecordBatch]:
        for batch in daylog.iter_batches():
            if cutoff is None:
                if not held_out:
                    yield batch
                continue
            times = batch.column(event_time).cast(pa.int64())
            keep = pc.greater_equal(times, cutoff) if held_out else pc.less(times, cutoff)
            part = batch.filter(keep)
            if part.num_rows:
                yield part

    return stream


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
    config: TrainConfig,
    init: Checkpoint | None = None,
    holdout: float = DEFAULT_HOLDOUT,
    prior_from_checkpoint: bool = True,
    storage_options: dict[str, Any] | None = None,
    progress: bool | None = None,
) -> DaysTrainResult:
    """Train on ``days`` days of logs ending ``end_day``; the latest ``holdout`` of rows (by event time)
    are the evaluation slice whose metrics go into the checkpoint.

    Without ``init`` the spec's numeric statistics are fitted on the training rows and frozen. With
    ``init`` and ``prior_from_checkpoint`` every row's prior is the checkpoint's own prediction, so
    ``reloop``/``distill`` have a prior to correct against.
    """
    day_list = day_range(end_day, days)
    if init is not None:
        spec = init.feature_spec()
    daylog = open_days(logs_uri, day_list, spec, storage_options=storage_options, batch_size=65536)
    cutoff = holdout_cutoff(daylog, spec.event_time, holdout)
    train_stream = _split(daylog, spec.event_time, cutoff, held_out=False)
    eval_stream = _split(daylog, spec.event_time, cutoff, held_out=True) if cutoff is not None else None
    if not spec.is_fitted:
        spec = fit_numeric(spec, train_stream())
    prior_source = "none"
    if init is not None and prior_from_checkpoint:
        train_stream = _with_prior(train_stream, Predictor(init))
        prior_source = "checkpoint"
    result = train(
        config=config,
        spec=spec,
        batches=train_stream,
        init=init,
        first_day=day_list[0],
        last_day=day_list[-1],
        eval_batches=eval_stream,
        progress=progress,
    )
    eval_rows = int(result.checkpoint.metrics.get("rows", 0)) if eval_stream is not None else 0
    holdout_from = None
    if cutoff is not None:
        holdout_from = pa.scalar(cutoff, pa.timestamp("us", "UTC")).as_py().isoformat()
    result.checkpoint.train_config["run"] = {
        "days": [d.isoformat() for d in day_list],
        "holdout": holdout,
        "holdout_from": holdout_from,
        "prior_source": prior_source,
        "ingest": daylog.report.to_dict(),
    }
    return DaysTrainResult(
        result=result,
        ingest=daylog.report,
        days=day_list,
        train_rows=result.rows,
        eval_rows=eval_rows,
        holdout_from=holdout_from,
        prior_source=prior_source,
    )
