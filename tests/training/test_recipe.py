"""The one training recipe: what the cycle, ``reloop train``, the demo and the replay train with."""

from __future__ import annotations

import pytest

from reloop_service.config import Settings
from reloop_service.training.recipe import auto_batch_size, recipe_config


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
