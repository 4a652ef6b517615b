"""The one training recipe: how settings and a day's size become a ``TrainConfig``.

The cycle, ``reloop train``, the demo and the replay all call ``recipe_config`` so a model trained
anywhere is trained the same way. The constants here were chosen on the replays' selection bins
(docs/benchmarks.md, "Model quality"): shuffled rows, dropout 0.1, two passes for a model trained
from scratch and a third over its embedding tables alone at a tenth of their rate, learning rates
that decay over each warm-started day, and a batch that grows with the day so a 1,000-row day still
takes tens of steps and a 10-million-row day does not take millions.
"""

from __future__ import annotations

import math
from dataclasses import replace

from reloop_service.config import Settings
from reloop_service.training.trainer import TrainConfig, steps_for

MIN_BATCH = 128
MAX_BATCH = 4096
ROWS_PER_STEP_DIVISOR = 64  # about 64 steps per pass until the batch reaches MAX_BATCH


def auto_batch_size(rows: int) -> int:
    """A power of two near ``rows / 64``, clamped to [128, 4096]."""
    if rows <= 0:
        return MIN_BATCH
    exp = round(math.log2(max(rows / ROWS_PER_STEP_DIVISOR, 1.0)))
    return int(min(MAX_BATCH, max(MIN_BATCH, 2**exp)))


def recipe_config(settings: Settings, *, loss: str, rows: int, cold: bool) -> TrainConfig:
    """The trainer's config for ``rows`` training rows (``cold``: no warm start, so more passes)."""
    model_args = {
        "embedding_dim": settings.embedding_dim,
        "hidden": list(settings.mlp_hidden),
        "dropout": settings.dropout,
    }
    kwargs: dict[str, object] = {
        "model": settings.model,
        "model_args": model_args,
        "loss": loss,
        "loss_params": dict(settings.loss_params) if loss == settings.loss else {},
        "lr": settings.learning_rate,
        "epochs": settings.cold_start_epochs if cold else settings.epochs,
        "batch_size": settings.batch_size or auto_batch_size(rows),
        "seed": settings.seed,
        "threads": settings.threads,
        "shuffle_buffer_rows": settings.shuffle_buffer_rows,
        # A warm-started day refines a trained model, so its end state is what ships: decaying settles
        # it. A cold start needs every step at full rate (on ml100k's full retrain the decay cost
        # 0.001 AUC on the reported bins and gained nothing on the selection bins).
        "lr_final_fraction": 1.0 if cold else settings.lr_final_fraction,
        # Then a settle pass over the tables alone at a tenth of their rate (MLP frozen): +0.0018 AUC
        # on ml100k's full retrain's selection bins at the same logloss, and +0.0018 after each
        # warm-started bin there; on the simulator's selection worlds it ties (gap to Bayes 0.03-0.04
        # points lower, calibration within the band). The post-gate holdout pass inherits it.
        "settle_epochs": settings.cold_start_settle_epochs if cold else settings.settle_epochs,
        "planned_rows": rows,
    }
    if settings.sparse_learning_rate is not None:
        kwargs["sparse_lr"] = settings.sparse_learning_rate
    return TrainConfig(**kwargs)  # type: ignore[arg-type]


def day_schedule(
    config: TrainConfig, *, train_rows: int, holdout_rows: int
) -> tuple[TrainConfig, TrainConfig]:
    """One learning-rate decay over a day's training and its post-gate holdout pass.

    Returns the configs of (the candidate, the holdout pass): the candidate decays from the full
    rate to where the day's schedule stands after its own steps, and the holdout pass goes on from
    there to ``lr_final_fraction``. Restarting the holdout pass at the full rate undid the decay's
    settling on the simulator (its last tenth of the steps ran at the noisiest rates).
    """
    final = config.lr_final_fraction
    holdout = replace(config, epochs=1, planned_rows=holdout_rows, lr_final_fraction=final)
    train_steps, holdout_steps = steps_for(config, train_rows), steps_for(holdout, holdout_rows)
    middle = 1.0 - (1.0 - final) * train_steps / max(train_steps + holdout_steps, 1)
    return replace(config, lr_final_fraction=middle), replace(holdout, lr_start_fraction=middle)
