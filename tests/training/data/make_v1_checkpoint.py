"""Writes ``v1_checkpoint.pt``: a checkpoint in the pre-fusion layout (format version 1).

Run once with the code of commit ba1988b (one embedding table per field, per-row Adam step counts)::

    git archive ba1988b reloop_service | tar -x -C /tmp/oldcode
    PYTHONPATH=/tmp/oldcode python tests/training/data/make_v1_checkpoint.py

The file holds the checkpoint bytes, a feature batch and the predictions that code gave for it, so
the tests can check that today's code loads the old layout and predicts the same.
"""

from __future__ import annotations

from pathlib import Path

import torch

from reloop_service.data.spec import CategoricalField, FeatureSpec, MultiCategoricalField, NumericField
from reloop_service.data.transforms import FeatureBatch
from reloop_service.training.checkpoint import Checkpoint, checkpoint_to_bytes
from reloop_service.training.models import build_model
from reloop_service.training.optim import RowSparseAdam


def main() -> None:
    spec = FeatureSpec(
        label="y",
        impression_id="id",
        event_time="t",
        categorical=(CategoricalField("a", 50), CategoricalField("b", 20)),
        numeric=(NumericField("n", 0.0, 1.0),),
        multi=(MultiCategoricalField("m", 30, 4),),
    )
    torch.manual_seed(0)
    model = build_model("deepfm", spec, embedding_dim=4, hidden=[8])
    g = torch.Generator().manual_seed(1)
    batch = FeatureBatch(
        cat=torch.randint(0, 20, (16, 2), generator=g),
        multi=torch.randint(0, 30, (16, 1, 4), generator=g) * (torch.rand(16, 1, 4, generator=g) < 0.6),
        num=torch.randn(16, 1, generator=g),
    )
    dense = torch.optim.Adam(model.dense_parameters(), lr=0.01)
    sparse = RowSparseAdam(model.sparse_tables(), lr=0.05)
    model.train()
    for step in range(3):  # a few steps so moments and per-row step counts differ between rows
        rows = slice(step * 4, step * 4 + 8)
        part = FeatureBatch(cat=batch.cat[rows], multi=batch.multi[rows], num=batch.num[rows])
        dense.zero_grad()
        sparse.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(part), torch.ones(8)).backward()
        dense.step()
        sparse.step()
    model.eval()
    with torch.inference_mode():
        expected = torch.sigmoid(model(batch))
    ckpt = Checkpoint(
        model_name="deepfm",
        model_args=model.model_args,
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        spec=spec.to_dict(),
        loss="bce",
        loss_params={},
        seed=0,
        optimizer_state={"dense": dense.state_dict(), "sparse": sparse.state_dict()},
    )
    out = Path(__file__).with_name("v1_checkpoint.pt")
    torch.save(
        {
            "checkpoint": checkpoint_to_bytes(ckpt),
            "cat": batch.cat,
            "multi": batch.multi,
            "num": batch.num,
            "expected": expected,
        },
        out,
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
