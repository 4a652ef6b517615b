"""The compiled eval forward of the served DNN (``serving.fastforward``) against the model's own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from reloop_service.data.transforms import transform_records
from reloop_service.serving.fastforward import NUMPY_MLP_MAX_ROWS, FastDNN
from reloop_service.training.models import build_model
from reloop_service.training.predict import Predictor
from tests.serving.conftest import SPEC, make_checkpoint


def _trained(name: str = "dnn", **args: object) -> torch.nn.Module:
    """A model whose every table row is set (a fresh table is zeros until training touches a row)."""
    torch.manual_seed(3)
    model = build_model(name, SPEC, embedding_dim=4, hidden=[16, 8], **args)
    model.embedding.table.materialize()
    return model.eval()


def _records(n: int, seed: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    out: list[dict[str, object]] = []
    for i in range(n):
        rec: dict[str, object] = {f.name: f"v{rng.integers(50)}" for f in SPEC.categorical}
        rec.update({f.name: float(rng.normal(3, 2)) for f in SPEC.numeric})
        rec.update({m.name: [f"t{rng.integers(20)}" for _ in range(i % (m.max_len + 2))] for m in SPEC.multi})
        if i % 3 == 0:  # missing fields and nulls too
            rec.pop(SPEC.categorical[0].name)
            rec[SPEC.numeric[0].name] = None
        out.append(rec)
    return out


@pytest.mark.parametrize("rows", [1, 2, NUMPY_MLP_MAX_ROWS, NUMPY_MLP_MAX_ROWS + 1, 100])
def test_same_predictions_as_the_model(rows: int) -> None:
    model = _trained()
    fast = FastDNN.build(model, SPEC)
    assert fast is not None
    batch, _ = transform_records(SPEC, _records(rows, seed=rows))
    with torch.inference_mode():
        expected = torch.sigmoid(model(batch)).double().numpy()
    got = fast.predict_features(batch)
    assert got.dtype == np.float64 and got.shape == (rows,)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7)


def test_served_checkpoint_compiles_and_matches_the_predictor() -> None:
    predictor = Predictor(make_checkpoint(1))
    fast = FastDNN.build(predictor.model, predictor.spec)
    assert fast is not None
    records = _records(7, seed=1)
    np.testing.assert_allclose(
        fast.predict_features(transform_records(predictor.spec, records)[0]),
        predictor.predict_records(records),
        rtol=0,
        atol=1e-7,
    )


@pytest.mark.parametrize("name", ["deepfm", "dcnv2", "lr"])
def test_other_models_keep_their_own_forward(name: str) -> None:
    model = build_model(name, SPEC, embedding_dim=4, **({} if name == "lr" else {"hidden": [8]})).eval()
    assert FastDNN.build(model, SPEC) is None


def test_a_dnn_in_training_mode_or_with_unknown_layers_is_declined() -> None:
    model = _trained()
    assert FastDNN.build(model.train(), SPEC) is None
    model = _trained()
    model.mlp.net.append(nn.LayerNorm(8))
    assert FastDNN.build(model, SPEC) is None


def test_a_dnn_whose_head_changed_is_declined_by_the_probe() -> None:
    """A change the structural checks cannot see (here: another head) fails the probe comparison."""
    model = _trained()
    original = model.head
    model.head = lambda emb, num: original(emb, num) * 0.5  # type: ignore[method-assign]
    assert FastDNN.build(model, SPEC) is None


def test_a_spec_with_other_buckets_is_declined() -> None:
    model = _trained()
    other = SPEC.to_dict()
    other["categorical"][0]["buckets"] += 1
    from reloop_service.data.spec import FeatureSpec

    assert FastDNN.build(model, FeatureSpec.from_dict(other)) is None


def test_extreme_logits_give_finite_probabilities() -> None:
    model = _trained()
    with torch.no_grad():
        model.out.bias.fill_(-1e4)
    fast = FastDNN.build(model, SPEC)
    assert fast is not None
    batch, _ = transform_records(SPEC, _records(3, seed=0))
    with np.errstate(all="raise"):
        got = fast.predict_features(batch)
    assert np.all(got >= 0.0) and np.all(got < 1e-300)


def test_the_served_model_scores_through_the_compiled_forward(served) -> None:
    client, _ = served
    loaded = client.app.state.serving.holder.current
    assert isinstance(loaded.fast, FastDNN)
    items = [{"features": r} for r in _records(5, seed=2)]
    r = client.post("/v1/predict", json={"items": items})
    assert r.status_code == 200, r.text
    expected = loaded.predictor.predict_records([it["features"] for it in items])
    np.testing.assert_allclose([p["ctr"] for p in r.json()["predictions"]], expected, rtol=0, atol=1e-7)


def test_single_rows_take_their_own_path_and_agree() -> None:
    """One row at a time (the single-item request's path): empty, partial and full bags, missing values."""
    model = _trained()
    fast = FastDNN.build(model, SPEC)
    assert fast is not None
    for record in _records(9, seed=4):
        batch, _ = transform_records(SPEC, [record])
        with torch.inference_mode():
            expected = torch.sigmoid(model(batch)).double().numpy()
        np.testing.assert_allclose(fast.predict_features(batch), expected, rtol=0, atol=1e-7)
