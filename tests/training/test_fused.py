"""Fused embedding table: same predictions and updates as per-field tables; old checkpoints load."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from reloop_service.data.spec import CategoricalField, FeatureSpec, MultiCategoricalField, NumericField
from reloop_service.data.transforms import FeatureBatch
from reloop_service.training.checkpoint import (
    CHECKPOINT_VERSION,
    Checkpoint,
    CheckpointError,
    checkpoint_from_bytes,
    checkpoint_to_bytes,
)
from reloop_service.training.layers import (
    FieldEmbedding,
    RowSparseEmbedding,
    initial_rows,
    masked_mean_pool,
)
from reloop_service.training.models import MODELS, build_model
from reloop_service.training.optim import RowSparseAdam

V1 = Path(__file__).with_name("data") / "v1_checkpoint.pt"


def spec() -> FeatureSpec:
    return FeatureSpec(
        label="y",
        impression_id="id",
        event_time="t",
        categorical=(CategoricalField("a", 50), CategoricalField("b", 20)),
        numeric=(NumericField("n", 0.0, 1.0),),
        multi=(MultiCategoricalField("m", 30, 4), MultiCategoricalField("k", 9, 2)),
    )


def batch(b: int = 12) -> FeatureBatch:
    g = torch.Generator().manual_seed(3)
    multi = torch.randint(0, 9, (b, 2, 4), generator=g) * (torch.rand(b, 2, 4, generator=g) < 0.5)
    multi[:, 1, 2:] = 0  # the shorter field is padded to the longest
    multi[0] = 0  # a row with no value at all: bucket 0's row
    return FeatureBatch(
        cat=torch.randint(0, 20, (b, 2), generator=g), multi=multi, num=torch.randn(b, 1, generator=g)
    )


def per_field_tables(emb: FieldEmbedding) -> list[RowSparseEmbedding]:
    """The pre-fusion layout: one table per field holding that field's rows of the fused table."""
    tables = []
    for j, n in enumerate(emb.buckets):
        table = RowSparseEmbedding(n, emb.dim)
        table.weight.data.copy_(emb.field_rows(j))
        tables.append(table)
    return tables


def per_field_forward(emb: FieldEmbedding, tables: list[RowSparseEmbedding], f: FeatureBatch) -> torch.Tensor:
    """The pre-fusion forward: a lookup per field, multi-valued fields mean-pooled one by one."""
    parts = [tables[j](f.cat[:, j]) for j in range(emb.n_cat)]
    parts += [
        masked_mean_pool(tables[emb.n_cat + j](f.multi[:, j]), f.multi[:, j]) for j in range(emb.n_multi)
    ]
    return torch.stack(parts, dim=1)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fused_and_per_field_models_predict_the_same(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, spec(), embedding_dim=4, hidden=[8]).eval()
    model.embedding.table.materialize()  # every row drawn now (tables start at zero)
    tables = per_field_tables(model.embedding)
    f = batch()
    with torch.inference_mode():
        fused = model(f)
        reference = model.head(per_field_forward(model.embedding, tables, f), f.num)
    torch.testing.assert_close(fused, reference, rtol=0, atol=1e-6)
    model.train()  # the training lookup (unique ids, row gather) gives the same values too
    assert model.embedding.table.tracking
    torch.testing.assert_close(model(f).detach(), reference, rtol=0, atol=1e-6)


def test_fused_training_steps_equal_per_field_tables() -> None:
    """Same gradients and the same Adam updates, row for row, over several steps."""
    torch.manual_seed(0)
    fused = FieldEmbedding([30, 7], [50, 9], 4)
    fused.table.materialize()
    tables = per_field_tables(fused)
    opt_f = RowSparseAdam(fused.tables(), lr=0.05)
    opt_s = RowSparseAdam(tables, lr=0.05)
    target = torch.linspace(-1, 1, 12 * 4 * 4).reshape(12, 4, 4)
    for _ in range(3):
        f = batch()
        f = FeatureBatch(cat=f.cat % 7, multi=f.multi, num=f.num)
        opt_f.zero_grad()
        opt_s.zero_grad()
        out_f = fused(f.cat, f.multi)
        out_s = per_field_forward(fused, tables, f)
        torch.testing.assert_close(out_f, out_s, rtol=0, atol=1e-7)
        ((out_f - target) ** 2).sum().backward()
        ((out_s - target) ** 2).sum().backward()
        opt_f.step()
        opt_s.step()
    for j, table in enumerate(tables):
        torch.testing.assert_close(fused.field_rows(j), table.weight, rtol=0, atol=1e-6)


def test_ids_out_of_their_field_range_are_refused() -> None:
    emb = FieldEmbedding([30, 7], [50], 4)
    multi = torch.zeros(1, 1, 3, dtype=torch.long)
    with pytest.raises(IndexError, match="categorical field 1: bucket id out of range for its table of 7"):
        emb(torch.tensor([[1, 7]]), multi)  # 7 would be field 2's first row in the fused table
    with pytest.raises(IndexError, match="multi-valued field 0: bucket id out of range for its table of 50"):
        emb(torch.tensor([[1, 2]]), torch.tensor([[[3, 50, 0]]]))


def test_a_version_1_checkpoint_loads_predicts_the_same_and_warm_starts() -> None:
    """``v1_checkpoint.pt`` was written by the pre-fusion code (see make_v1_checkpoint.py)."""
    saved = torch.load(V1, weights_only=True)
    ckpt = checkpoint_from_bytes(saved["checkpoint"])
    assert any(".cat_tables." in k for k in ckpt.state_dict)  # really the old layout
    model = ckpt.build_model()
    f = FeatureBatch(cat=saved["cat"], multi=saved["multi"], num=saved["num"])
    with torch.inference_mode():
        torch.testing.assert_close(torch.sigmoid(model(f)), saved["expected"], rtol=0, atol=1e-6)

    # its sparse optimizer state (one entry per field, per-row steps) loads into the fused optimizer
    opt = RowSparseAdam(model.sparse_tables(), lr=0.05)
    opt.load_state_dict(copy.deepcopy(ckpt.optimizer_state["sparse"]))
    (table,) = model.sparse_tables()
    old = ckpt.optimizer_state["sparse"]["state"]
    d = table.dim
    expected_moments = torch.cat([old[i]["moments"][:, : 2 * d] for i in range(3)])
    assert torch.equal(torch.cat(opt.moments(table), dim=1), expected_moments)
    assert opt.table_step(table) == max(int(old[i]["moments"][:, 2 * d].max()) for i in range(3)) == 3

    # saved again, it is a current-version checkpoint in the fused layout that predicts the same
    again = Checkpoint(**{**ckpt.__dict__, "state_dict": model.state_dict()})
    reloaded = checkpoint_from_bytes(checkpoint_to_bytes(again))
    assert "embedding.table.weight" in reloaded.state_dict
    version = torch.load(io.BytesIO(checkpoint_to_bytes(again)), weights_only=True)["version"]
    assert version == CHECKPOINT_VERSION == 3
    with torch.inference_mode():
        torch.testing.assert_close(
            torch.sigmoid(reloaded.build_model()(f)), saved["expected"], rtol=0, atol=1e-6
        )


def test_an_unknown_checkpoint_version_is_refused_with_the_readable_versions() -> None:
    saved = torch.load(V1, weights_only=True)
    payload = torch.load(io.BytesIO(saved["checkpoint"]), weights_only=True)
    payload["version"] = 99
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    refusal = r"unsupported checkpoint version 99 \(this build reads versions 1, 2, 3\)"
    with pytest.raises(CheckpointError, match=refusal):
        checkpoint_from_bytes(buffer.getvalue())


def _reference_initial_rows(seed: int, ids: torch.Tensor, dim: int) -> torch.Tensor:
    """The initial-value hash written out plainly (one new array per operation)."""
    mask = np.uint64(0xFFFFFFFFFFFFFFFF)

    def splitmix64(x: np.ndarray) -> np.ndarray:
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & mask
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))

    cells = (
        ids.numpy().astype(np.uint64)[:, None] * np.uint64(dim) + np.arange(dim, dtype=np.uint64)
    ).reshape(-1)
    bits = splitmix64(cells ^ splitmix64(np.full(1, seed, dtype=np.uint64)))
    quarters = [(bits >> np.uint64(16 * q)) & np.uint64(0xFFFF) for q in range(4)]
    total = sum(quarters[1:], quarters[0]).astype(np.float32)
    scale = np.float32(np.sqrt(3.0) / 2**16 * 0.01)
    return torch.from_numpy(((total - np.float32(2 * (2**16 - 1))) * scale).reshape(-1, dim))


@pytest.mark.parametrize("seed", [0, 7, 2**62 - 1])
@pytest.mark.parametrize("dim", [1, 16, 17])
def test_initial_rows_are_the_hash_values_bit_for_bit(seed: int, dim: int) -> None:
    """The in-place computation gives exactly the plain one's values (trained models keep theirs)."""
    ids = torch.cat(
        [
            torch.arange(5),
            torch.randint(0, 2**40, (2000,), generator=torch.Generator().manual_seed(seed % 97)),
        ]
    )
    with np.errstate(over="ignore"):
        expected = _reference_initial_rows(seed, ids, dim)
    got = initial_rows(seed, ids, dim)
    assert got.dtype == torch.float32 and got.shape == (ids.numel(), dim)
    assert torch.equal(got, expected)
    assert initial_rows(seed, ids[:0], dim).shape == (0, dim)


def test_rows_are_initialized_lazily_on_first_training_touch() -> None:
    """A new table is zeros; a training lookup uses a row's initial values, a pure function of
    (seed, row), and the optimizer's first update writes them (plus the update) into the table."""
    torch.manual_seed(0)
    table = RowSparseEmbedding(1000, 4)
    assert not table.weight.any()
    table.eval()
    assert not table(torch.tensor([5, 6])).any()  # inference reads what is stored: zeros
    table.train()
    out = table(torch.tensor([[5, 900], [5, 7]]))
    touched = torch.tensor([5, 7, 900])
    expected = initial_rows(table.init_seed, touched, 4)
    assert torch.equal(out.detach()[0, 0], expected[0]) and torch.equal(out.detach()[0, 1], expected[2])
    assert not table.weight.any()  # nothing written before an update
    opt = RowSparseAdam([table], lr=0.01)
    out.sum().backward()
    opt.step()
    assert int(table.weight.any(dim=1).sum()) == 3  # only the touched rows
    # Adam's first step moves each coordinate by lr (against the gradient's sign, here +1)
    torch.testing.assert_close(table.weight[touched], expected - 0.01, rtol=0, atol=1e-6)
    assert 0.003 < float(initial_rows(1, torch.arange(5000), 4).std()) < 0.02  # N(0, 0.01^2)

    other = RowSparseEmbedding(1000, 4)  # same seed, other order: same initial values
    other.init_seed = table.init_seed
    other.train()
    assert torch.equal(other(torch.tensor([900, 7, 5])).detach(), expected.flip(0))
