"""Models and layers: shapes, pooling that ignores padding, FM and cross formulas, registry errors."""

from __future__ import annotations

import pytest
import torch

from reloop_service.data.spec import CategoricalField, FeatureSpec, MultiCategoricalField, NumericField
from reloop_service.data.transforms import FeatureBatch
from reloop_service.training.checkpoint import CheckpointError, checkpoint_from_bytes
from reloop_service.training.layers import CrossNetV2, FMInteraction, masked_mean_pool
from reloop_service.training.models import MODELS, build_model


def spec(numeric: bool = True, multi: bool = True) -> FeatureSpec:
    return FeatureSpec(
        label="y",
        impression_id="id",
        event_time="t",
        categorical=(CategoricalField("a", 50), CategoricalField("b", 20)),
        numeric=(NumericField("n", 0.0, 1.0),) if numeric else (),
        multi=(MultiCategoricalField("m", 30, 4),) if multi else (),
    )


def batch(b: int = 6, numeric: bool = True, multi: bool = True) -> FeatureBatch:
    g = torch.Generator().manual_seed(0)
    return FeatureBatch(
        cat=torch.randint(0, 20, (b, 2), generator=g),
        multi=torch.randint(0, 30, (b, 1 if multi else 0, 4 if multi else 0), generator=g),
        num=torch.randn(b, 1 if numeric else 0, generator=g),
    )


def test_masked_mean_pool_ignores_padding_unless_all_padding() -> None:
    emb = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    ids = torch.tensor([[5, 0, 7], [0, 0, 0]])
    pooled = masked_mean_pool(emb, ids)
    assert pooled[0].tolist() == ((emb[0, 0] + emb[0, 2]) / 2).tolist()
    assert pooled[1].tolist() == emb[1, 0].tolist()  # all missing: bucket 0's embedding


def test_fm_interaction_equals_pairwise_sum() -> None:
    v = torch.randn(3, 4, 5)
    pairwise = sum((v[:, i] * v[:, j]).sum(-1) for i in range(4) for j in range(i + 1, 4))
    torch.testing.assert_close(FMInteraction()(v), pairwise)


def test_cross_layer_formula() -> None:
    net = CrossNetV2(3, 1)
    x0 = torch.randn(2, 3)
    expected = x0 * (x0 @ net.layers[0].weight.T + net.layers[0].bias) + x0
    torch.testing.assert_close(net(x0), expected)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(("numeric", "multi"), [(True, True), (False, False)])
def test_models_map_batches_to_logits(name: str, numeric: bool, multi: bool) -> None:
    torch.manual_seed(0)
    model = build_model(name, spec(numeric, multi), embedding_dim=4, hidden=[8], dropout=0.1)
    out = model(batch(numeric=numeric, multi=multi))
    assert out.shape == (6,)
    assert len(model.sparse_tables()) == 1  # one fused table for every field
    tables = {id(t.weight) for t in model.sparse_tables()}
    assert not tables & {id(p) for p in model.dense_parameters()}
    out.sum().backward()
    assert all(t.weight.grad is None for t in model.sparse_tables())  # no dense table gradient, ever
    assert all(
        ids.numel() and grads.shape[1] >= (1 if name == "lr" else 4)  # lr: one weight per value
        for t in model.sparse_tables()
        for ids, grads in t.collect_grads()
    )
    rebuilt = build_model(name, spec(numeric, multi), **model.model_args)
    assert rebuilt.model_args == model.model_args


def test_build_model_errors_name_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown model 'xgb'; known: dcnv2, deepfm, dnn"):
        build_model("xgb", spec())
    with pytest.raises(ValueError, match="no argument"):
        build_model("dnn", spec(), cross_layers=2)
    with pytest.raises(ValueError, match="hidden sizes must be positive"):
        build_model("dnn", spec(), hidden=[0])


def test_checkpoint_from_garbage_fails_clearly() -> None:
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        checkpoint_from_bytes(b"not a checkpoint")
