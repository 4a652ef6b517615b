"""Trainer end to end on generated Parquet click logs: signal, warm start, determinism, prior handling."""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from reloop_service.data.spec import CategoricalField, FeatureSpec
from reloop_service.data.transforms import fit_numeric
from reloop_service.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    checkpoint_from_bytes,
    checkpoint_to_bytes,
)
from reloop_service.training.predict import Predictor, evaluate_checkpoint
from reloop_service.training.trainer import (
    LinearDecay,
    TrainConfig,
    TrainError,
    TrainResult,
    rebatch,
    train,
)

from .conftest import make_day, parquet_batches, small_spec, write_day

D1, D2, D3 = dt.date(2024, 3, 1), dt.date(2024, 3, 2), dt.date(2024, 3, 3)
SMALL = {"hidden": [32, 16], "embedding_dim": 8}


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("logs")
    return {
        "day1": write_day(root, make_day(D1, 12000, 1), D1),
        "day2": write_day(root, make_day(D2, 12000, 2), D2),
    }


@pytest.fixture(scope="module")
def spec(logs: dict[str, Path]) -> FeatureSpec:
    return fit_numeric(small_spec(), parquet_batches(logs["day1"])())


@pytest.fixture(scope="module")
def eval_table() -> pa.Table:
    return make_day(D3, 4000, 3)


@pytest.fixture(scope="module")
def day1(spec: FeatureSpec, logs: dict[str, Path], eval_table: pa.Table) -> TrainResult:
    config = TrainConfig(model="dnn", model_args=SMALL, loss="reloop", batch_size=256, seed=7)
    return train(
        config=config,
        spec=spec,
        batches=parquet_batches(logs["day1"]),
        first_day=D1,
        last_day=D1,
        eval_batches=lambda: [eval_table],
    )


def test_end_to_end_training_learns_the_signal(day1: TrainResult, eval_table: pa.Table) -> None:
    metrics = day1.checkpoint.metrics
    assert metrics["auc"] > 0.72  # the hidden user/item effects are learnable; random is 0.5
    assert 0.8 < metrics["calibration"] < 1.25
    assert day1.rows == 12000
    assert day1.steps == len(day1.losses) == 12000 // 256 + 1  # re-batched to batch_size, short tail
    assert np.mean(day1.losses[-10:]) < np.mean(day1.losses[:10])
    # Metrics stored in the checkpoint are what evaluate_checkpoint computes from it.
    assert evaluate_checkpoint(day1.checkpoint, [eval_table])["auc"] == pytest.approx(
        metrics["auc"], abs=1e-12
    )


def test_reloop_without_prior_says_it_trains_as_bce(day1: TrainResult) -> None:
    assert day1.coverage == 0.0
    assert any("trains as BCE" in note for note in day1.notes)


def test_checkpoint_is_self_describing(day1: TrainResult) -> None:
    ckpt = day1.checkpoint
    assert ckpt.model_name == "dnn"
    assert ckpt.model_args == {"embedding_dim": 8, "hidden": [32, 16], "dropout": 0.0}
    assert ckpt.loss == "reloop" and ckpt.loss_params == {"alpha": 0.02}  # the default α
    assert ckpt.seed == 7
    assert (ckpt.first_day, ckpt.last_day) == (D1, D1)
    assert ckpt.feature_spec().is_fitted
    assert ckpt.train_config["batch_size"] == 256
    assert set(ckpt.optimizer_state) == {"dense", "sparse"}


def test_warm_start_continues_instead_of_starting_over(
    day1: TrainResult, spec: FeatureSpec, logs: dict[str, Path], eval_table: pa.Table
) -> None:
    config = TrainConfig(model="dnn", model_args=SMALL, loss="reloop", batch_size=256, seed=7)
    warm = train(
        config=config,
        spec=day1.checkpoint.feature_spec(),
        batches=parquet_batches(logs["day2"]),
        init=day1.checkpoint,
        last_day=D2,
        eval_batches=lambda: [eval_table],
    )
    cold = train(config=config, spec=spec, batches=parquet_batches(logs["day2"]), first_day=D2, last_day=D2)
    # A new model starts as the constant predictor (output bias = logit(CTR)); the warm one knows more.
    assert warm.first_batch_loss < cold.first_batch_loss - 0.05
    assert warm.checkpoint.first_day == D1  # the watermark spans both days
    assert warm.checkpoint.last_day == D2
    assert warm.checkpoint.metrics["auc"] >= day1.checkpoint.metrics["auc"] - 0.02
    # The sparse optimizer state was restored, not restarted: the table's step count keeps growing.
    steps_before = day1.checkpoint.optimizer_state["sparse"]["state"][0]["step"]
    steps_after = warm.checkpoint.optimizer_state["sparse"]["state"][0]["step"]
    assert steps_after > steps_before > 0


def test_a_new_model_starts_at_the_training_click_rate(spec: FeatureSpec, logs: dict[str, Path]) -> None:
    day = pq.read_table(logs["day2"])
    ctr = float(np.mean(day.column("label").to_numpy()))
    seen: list[float] = []
    config = TrainConfig(model="dnn", model_args=SMALL, loss="bce", batch_size=256, seed=1)
    train(
        config=config,
        spec=spec,
        batches=parquet_batches(logs["day2"]),
        on_batch=lambda s, n, v: seen.append(v),
    )
    constant = -(ctr * np.log(ctr) + (1 - ctr) * np.log(1 - ctr))
    assert abs(seen[0] - constant) < 0.05  # the first step's loss is the constant predictor's, not log 2
    assert constant < 0.6


def test_warm_start_rejects_another_spec_or_model(day1: TrainResult, logs: dict[str, Path]) -> None:
    other_spec = fit_numeric(small_spec(), parquet_batches(logs["day2"])())
    config = TrainConfig(model="dnn", model_args=SMALL, batch_size=256)
    with pytest.raises(TrainError, match="feature spec differs"):
        train(config=config, spec=other_spec, batches=parquet_batches(logs["day2"]), init=day1.checkpoint)
    with pytest.raises(TrainError, match="cannot warm-start a 'deepfm' model"):
        train(
            config=TrainConfig(model="deepfm", batch_size=256),
            spec=None,
            batches=parquet_batches(logs["day2"]),
            init=day1.checkpoint,
        )


@pytest.mark.parametrize("model", ["dnn", "deepfm", "dcnv2"])
def test_checkpoint_round_trip_predicts_bit_identically(
    model: str, spec: FeatureSpec, logs: dict[str, Path], eval_table: pa.Table
) -> None:
    config = TrainConfig(model=model, model_args=SMALL, loss="bce", batch_size=512)
    ckpt = train(config=config, spec=spec, batches=parquet_batches(logs["day1"], 3000)).checkpoint
    before = Predictor(ckpt).predict_batch(eval_table)
    loaded = checkpoint_from_bytes(checkpoint_to_bytes(ckpt))
    assert isinstance(loaded, Checkpoint)
    after = Predictor(loaded).predict_batch(eval_table)
    assert np.array_equal(before, after)
    # Sliced inference for large inputs: same values up to matmul blocking at another batch size.
    sliced = Predictor(loaded, batch_size=1000).predict_batch(eval_table)
    np.testing.assert_allclose(sliced, before, rtol=0, atol=1e-6)
    assert loaded.describe() == ckpt.describe()
    # Records and columns give the same values for the same rows (same batch, same matmul blocking).
    head = eval_table.slice(0, 5)
    predictor = Predictor(loaded)
    assert np.array_equal(predictor.predict_records(head.to_pylist()), predictor.predict_batch(head))


def test_training_is_deterministic_with_a_seed(spec: FeatureSpec, logs: dict[str, Path]) -> None:
    def run(seed: int) -> TrainResult:
        config = TrainConfig(model="dcnv2", model_args={**SMALL, "dropout": 0.1}, batch_size=512, seed=seed)
        return train(config=config, spec=spec, batches=parquet_batches(logs["day1"], 700))

    a, b, c = run(3), run(3), run(4)
    assert a.losses == b.losses
    state_a, state_b = a.checkpoint.state_dict, b.checkpoint.state_dict
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert a.losses != c.losses


def test_prior_column_coverage_and_mask(spec: FeatureSpec, tmp_path: Path) -> None:
    rows = 2000
    prior = np.where(np.arange(rows) % 4 == 0, np.nan, 0.2)  # a quarter of the rows have no prior
    table = make_day(D1, rows, 9, prior=prior)
    config = TrainConfig(model="dnn", model_args=SMALL, loss="distill", batch_size=300)
    result = train(config=config, spec=spec, batches=lambda: table.to_batches(max_chunksize=450))
    assert result.coverage == pytest.approx(0.75)
    assert any("coverage 75.0%" in note for note in result.notes)


def test_reloop_with_no_prior_is_exactly_bce(spec: FeatureSpec) -> None:
    table = make_day(D1, 1500, 5, prior=np.full(1500, np.nan))
    results = {
        loss: train(
            config=TrainConfig(model="dnn", model_args=SMALL, loss=loss, batch_size=256),
            spec=spec,
            batches=lambda: [table],
        )
        for loss in ("bce", "reloop")
    }
    assert results["bce"].losses == results["reloop"].losses


def test_bad_prior_value_names_the_column_and_row(spec: FeatureSpec) -> None:
    prior = np.full(100, 0.1)
    prior[42] = 1.5
    table = make_day(D1, 100, 5, prior=prior)
    with pytest.raises(TrainError, match=rf"'prior_ctr': impression '{D1.isoformat()}-42' has 1\.5"):
        train(config=TrainConfig(model_args=SMALL, batch_size=1000), spec=spec, batches=lambda: [table])


def test_empty_input_and_unfitted_spec_fail_clearly(spec: FeatureSpec) -> None:
    with pytest.raises(TrainError, match="no training rows"):
        train(config=TrainConfig(model_args=SMALL), spec=spec, batches=lambda: [])
    with pytest.raises(TrainError, match="not fitted"):
        train(config=TrainConfig(model_args=SMALL), spec=small_spec(), batches=lambda: [])


def test_rebatch_cuts_exact_sizes_across_input_batches() -> None:
    table = pa.table({"x": list(range(23))})
    out = list(rebatch(table.to_batches(max_chunksize=5), 4))
    assert [t.num_rows for t in out] == [4, 4, 4, 4, 4, 3]
    assert [v for t in out for v in t.column("x").to_pylist()] == list(range(23))


def test_linear_decay_scales_every_group_and_restores_the_configured_rates() -> None:
    weight = torch.nn.Parameter(torch.zeros(3))
    dense = torch.optim.Adam([weight], lr=1e-3)
    other = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=5e-2)
    decay = LinearDecay([dense, None, other], final=0.1, steps=10)
    decay.apply(0)
    assert dense.param_groups[0]["lr"] == pytest.approx(1e-3)
    decay.apply(5)
    assert dense.param_groups[0]["lr"] == pytest.approx(0.55e-3)
    assert other.param_groups[0]["lr"] == pytest.approx(0.55 * 5e-2)
    decay.apply(25)  # past the plan (a day with more rows than planned) it stays at the floor
    assert dense.param_groups[0]["lr"] == pytest.approx(1e-4)
    decay.restore()
    assert dense.param_groups[0]["lr"] == 1e-3 and other.param_groups[0]["lr"] == 5e-2


def test_decayed_training_counts_unplanned_rows_and_stores_the_configured_rates(
    spec: FeatureSpec, logs: dict[str, Path]
) -> None:
    rows = pq.read_metadata(logs["day1"]).num_rows

    def run(**kw: object) -> TrainResult:
        config = TrainConfig(model="dnn", model_args=SMALL, loss="bce", batch_size=512, seed=5, **kw)  # type: ignore[arg-type]
        return train(config=config, spec=spec, batches=parquet_batches(logs["day1"], 700))

    planned, counted, constant = (
        run(lr_final_fraction=0.0, planned_rows=rows),
        run(lr_final_fraction=0.0),
        run(),
    )
    assert planned.losses == counted.losses  # rows counted by one read when not planned: the same schedule
    assert planned.losses[:1] == constant.losses[:1]  # the first step runs at the full rate
    assert planned.losses != constant.losses  # later ones do not
    for result in (planned, constant):
        groups = result.checkpoint.optimizer_state
        assert groups["dense"]["param_groups"][0]["lr"] == 1e-3  # the next warm start begins at them
        assert groups["sparse"]["param_groups"][0]["lr"] == 5e-2
    with pytest.raises(ValueError, match="lr_final_fraction must be within"):
        TrainConfig(lr_final_fraction=1.5)
    with pytest.raises(ValueError, match="lr_start_fraction must be within"):
        TrainConfig(lr_start_fraction=0.0)


@pytest.fixture(scope="module")
def wide_day1(logs: dict[str, Path]) -> TrainResult:
    """A day trained with demo-like hash spaces: most table rows are never touched."""
    base = small_spec()
    wide = replace(
        base,
        categorical=(
            CategoricalField("user_id", 65536),
            CategoricalField("item_id", 16384),
            CategoricalField("device", 8),
        ),
    )
    spec = fit_numeric(wide, parquet_batches(logs["day1"])())
    config = TrainConfig(model="dnn", model_args=SMALL, loss="bce", batch_size=256, seed=7)
    return train(config=config, spec=spec, batches=parquet_batches(logs["day1"]), progress=False)


def test_a_checkpoint_stores_its_tables_by_their_trained_rows_and_warm_starts_as_before(
    wide_day1: TrainResult, logs: dict[str, Path]
) -> None:
    """Version 3 packs mostly-untouched tables (and their Adam moments) to their nonzero rows; the
    dense version 2 of the same checkpoint loads to the same tensors and warm-starts identically."""
    ckpt = wide_day1.checkpoint
    packed = checkpoint_to_bytes(ckpt)
    dense = checkpoint_to_bytes(ckpt, version=2)
    raw = torch.load(io.BytesIO(packed), weights_only=True)
    table = raw["state_dict"]["embedding.table.weight"]
    moments = raw["optimizer_state"]["sparse"]["state"][0]["moments"]
    full = ckpt.state_dict["embedding.table.weight"]
    touched = int(full.any(dim=1).sum())
    assert isinstance(table, dict) and table["shape"] == list(full.shape)
    assert table["values"].shape[0] == touched < full.shape[0] // 2
    assert isinstance(moments, dict) and 0 < moments["values"].shape[0] <= full.shape[0] // 2
    assert len(packed) < len(dense) // 2

    from_packed, from_dense = checkpoint_from_bytes(packed), checkpoint_from_bytes(dense)
    for loaded in (from_packed, from_dense):
        assert loaded.state_dict.keys() == ckpt.state_dict.keys()
        for key, value in ckpt.state_dict.items():
            assert torch.equal(loaded.state_dict[key], value), key
        assert torch.equal(moments_of(loaded), moments_of(ckpt))
    config = TrainConfig(model="dnn", model_args=SMALL, loss="bce", batch_size=256, seed=7)
    warm = [
        train(config=config, spec=None, batches=parquet_batches(logs["day2"]), init=init, progress=False)
        for init in (from_packed, from_dense)
    ]
    assert torch.equal(
        warm[0].checkpoint.state_dict["embedding.table.weight"],
        warm[1].checkpoint.state_dict["embedding.table.weight"],
    )
    assert warm[0].losses == warm[1].losses


def moments_of(ckpt: Checkpoint) -> torch.Tensor:
    moments: torch.Tensor = ckpt.optimizer_state["sparse"]["state"][0]["moments"]
    return moments


def test_a_damaged_packed_table_is_refused_naming_the_field(wide_day1: TrainResult) -> None:
    raw = torch.load(io.BytesIO(checkpoint_to_bytes(wide_day1.checkpoint)), weights_only=True)
    record = raw["state_dict"]["embedding.table.weight"]
    record["values"] = record["values"][:-1]  # one row fewer than the ids it names
    buffer = io.BytesIO()
    torch.save(raw, buffer)
    with pytest.raises(CheckpointError, match="field 'state_dict'"):
        checkpoint_from_bytes(buffer.getvalue())


def _train_day1(
    spec: FeatureSpec, logs: dict[str, Path], model_args: dict = SMALL, **kw: object
) -> TrainResult:
    """Day 1 at batch 1024, seed 3, with ``kw`` on top of the config (the settle tests' run)."""
    config = TrainConfig(model="dnn", model_args=model_args, loss="bce", batch_size=1024, seed=3, **kw)  # type: ignore[arg-type]
    return train(config=config, spec=spec, batches=parquet_batches(logs["day1"]), progress=False)


def test_settle_passes_update_the_tables_alone_at_their_fraction_of_the_rate(
    spec: FeatureSpec, logs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from reloop_service.training.optim import RowSparseAdam

    sparse_rates: list[float] = []
    dense_steps: list[int] = []
    sparse_step, dense_step = RowSparseAdam.step, torch.optim.Adam.step

    def record_sparse(self: RowSparseAdam, *a: object, **kw: object) -> object:
        sparse_rates.append(self.param_groups[0]["lr"])
        return sparse_step(self, *a, **kw)  # type: ignore[arg-type]

    def record_dense(self: torch.optim.Adam, *a: object, **kw: object) -> object:
        dense_steps.append(1)
        return dense_step(self, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(RowSparseAdam, "step", record_sparse)
    monkeypatch.setattr(torch.optim.Adam, "step", record_dense)

    plain = _train_day1(spec, logs)
    steps = plain.steps
    sparse_rates.clear()
    dense_steps.clear()
    settled = _train_day1(spec, logs, settle_epochs=1, settle_fraction=0.25)
    assert settled.steps == 2 * steps and settled.rows == plain.rows
    assert settled.losses[:steps] == plain.losses  # the first pass is the plain run's
    assert sparse_rates == [5e-2] * steps + [pytest.approx(0.25 * 5e-2)] * steps
    assert len(dense_steps) == steps  # the MLP is frozen in the settle pass
    before, after = plain.checkpoint.state_dict, settled.checkpoint.state_dict
    for key, value in before.items():
        if key == "embedding.table.weight":
            assert not torch.equal(value, after[key])  # the tables moved on
        else:
            assert torch.equal(value, after[key]), key  # the MLP and the output bias did not
    groups = settled.checkpoint.optimizer_state
    assert groups["sparse"]["param_groups"][0]["lr"] == 5e-2  # the configured rate is what is stored
    with pytest.raises(ValueError, match="settle_epochs must not be negative"):
        TrainConfig(settle_epochs=-1)
    with pytest.raises(ValueError, match="settle_fraction must be within"):
        TrainConfig(settle_fraction=0.0)


def test_settle_passes_can_run_with_the_mlps_dropout_off(
    spec: FeatureSpec, logs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    modes: list[bool] = []
    forward = torch.nn.Dropout.forward

    def record(self: torch.nn.Dropout, x: torch.Tensor) -> torch.Tensor:
        modes.append(self.training)
        return forward(self, x)

    monkeypatch.setattr(torch.nn.Dropout, "forward", record)
    args = {**SMALL, "dropout": 0.5}
    on = _train_day1(spec, logs, args, settle_epochs=1)
    half = len(modes) // 2
    assert modes and all(modes)  # dropout on in both passes by default
    modes.clear()
    off = _train_day1(spec, logs, args, settle_epochs=1, settle_dropout=False)
    assert modes[:half] == [True] * half and not any(modes[half:])  # off in the settle pass only
    assert on.losses[: on.steps // 2] == off.losses[: off.steps // 2]  # the first pass is the same
    assert on.losses[on.steps // 2 :] != off.losses[off.steps // 2 :]


def test_the_settle_pass_computes_no_gradient_for_the_frozen_mlp(
    spec: FeatureSpec, logs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    grads: list[bool] = []
    forward = torch.nn.Linear.forward

    def record(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            grads.append(self.weight.requires_grad)
        return forward(self, x)

    monkeypatch.setattr(torch.nn.Linear, "forward", record)
    _train_day1(spec, logs, settle_epochs=1)
    half = len(grads) // 2
    assert grads and grads[:half] == [True] * half and not any(grads[half:])
