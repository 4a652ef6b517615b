"""The one training recipe: what the cycle, ``reloop train``, the demo and the replay train with."""

from __future__ import annotations

import pytest

from reloop_service.config import Settings
from reloop_service.training.recipe import auto_batch_size, day_schedule, recipe_config
from reloop_service.training.trainer import LinearDecay


def test_warm_started_days_decay_their_rates_and_cold_starts_do_not() -> None:
    settings = Settings(lr_final_fraction=0.25)
    warm = recipe_config(settings, loss="bce", rows=20_000, cold=False)
    cold = recipe_config(settings, loss="bce", rows=20_000, cold=True)
    assert warm.lr_final_fraction == 0.25 and warm.planned_rows == 20_000
    assert cold.lr_final_fraction == 1.0  # a cold start needs every step at full rate
    assert (warm.epochs, cold.epochs) == (settings.epochs, settings.cold_start_epochs)
    assert warm.batch_size == auto_batch_size(20_000) == 256
    assert recipe_config(Settings(), loss="bce", rows=1, cold=False).lr_final_fraction == 0.1


def test_a_decay_outside_zero_to_one_is_refused_naming_the_setting() -> None:
    with pytest.raises(ValueError, match="lr_final_fraction"):
        Settings(lr_final_fraction=1.5)


def test_the_day_schedule_decays_once_over_the_candidate_and_the_holdout_pass() -> None:
    settings = Settings(lr_final_fraction=0.1)
    warm = recipe_config(settings, loss="bce", rows=9_000, cold=False)  # batch 128: 71 steps
    candidate, holdout = day_schedule(warm, train_rows=9_000, holdout_rows=1_000)  # + 8 steps
    middle = 1.0 - 0.9 * 71 / 79
    assert candidate.lr_start_fraction == 1.0
    assert candidate.lr_final_fraction == pytest.approx(middle)
    assert holdout.lr_start_fraction == pytest.approx(middle)  # it goes on where the candidate stopped
    assert holdout.lr_final_fraction == 0.1
    assert (holdout.epochs, holdout.planned_rows, holdout.batch_size) == (1, 1_000, warm.batch_size)
    decay = LinearDecay([], start=holdout.lr_start_fraction, final=holdout.lr_final_fraction, steps=8)
    assert decay.factor(0) == pytest.approx(middle) and decay.factor(8) == pytest.approx(0.1)
    cold = recipe_config(settings, loss="bce", rows=9_000, cold=True)
    cold_candidate, cold_holdout = day_schedule(cold, train_rows=9_000, holdout_rows=1_000)
    assert cold_candidate.lr_final_fraction == cold_holdout.lr_start_fraction == 1.0  # no decay at all


def test_every_training_ends_with_a_settle_pass_by_default() -> None:
    settings = Settings()
    cold = recipe_config(settings, loss="bce", rows=9_000, cold=True)
    warm = recipe_config(settings, loss="bce", rows=9_000, cold=False)
    assert (cold.settle_epochs, warm.settle_epochs) == (1, 1)
    _, warm_holdout = day_schedule(warm, train_rows=9_000, holdout_rows=1_000)
    assert warm_holdout.settle_epochs == 1
    assert cold.settle_fraction == 0.1
    _, holdout = day_schedule(cold, train_rows=9_000, holdout_rows=1_000)
    assert (holdout.epochs, holdout.settle_epochs) == (1, 1)  # a full-rate pass over it, then a settle pass
    off = recipe_config(Settings(cold_start_settle_epochs=0), loss="bce", rows=9_000, cold=True)
    assert off.settle_epochs == 0


def test_cold_and_warm_settle_passes_are_set_apart() -> None:
    settings = Settings(settle_epochs=0, cold_start_settle_epochs=2)
    warm = recipe_config(settings, loss="bce", rows=9_000, cold=False)
    cold = recipe_config(settings, loss="bce", rows=9_000, cold=True)
    assert (warm.settle_epochs, cold.settle_epochs) == (0, 2)
