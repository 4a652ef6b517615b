"""Calibration diagnosis on the click simulator, outside the loop (docs/benchmarks.md, "Model quality").

The project's trainer, model, optimizer and predictor on simulated days, without registry, predict
path and archive, so a variant runs in under a minute: days 0-3 train a cold start, then every day
is scored by the model of the day before and trained on (warm start, the recipe's batch rule). It
prints, against the simulator's true CTR: the gap to the Bayes-optimal logloss on the selection days
(4..report_from-1) and the reported days, served calibration (mean prediction / mean true CTR) by
day, by hour, by position and device, for users seen before and never seen, and in-sample on the last
day. Reported recipe figures come from `reloop replay synthetic` (the real loop); this finds causes.

    python scripts/diagnose_simulator.py --data-seed 0 --lr-final 0.1
    python scripts/diagnose_simulator.py --data-seed 0 --lr-final 1 --embedding-l2 1e-3   # a variant

Two variants exist only here, as experiments the recipe did not keep: ``--embedding-l2`` (an L2
penalty on the embedding rows each example looks up, FuxiCTR's embedding regularizer) and
``--table-optimizer adagrad`` (element-wise Adagrad for the embedding rows instead of row-sparse Adam).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from datetime import date, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import torch

import reloop_service.training.models as models_module
import reloop_service.training.trainer as trainer_module
from reloop_service.data.simulator import ClickSimulator
from reloop_service.data.transforms import fit_numeric
from reloop_service.training.checkpoint import Checkpoint
from reloop_service.training.evaluation import auc
from reloop_service.training.optim import RowSparseAdam
from reloop_service.training.predict import Predictor
from reloop_service.training.recipe import auto_batch_size
from reloop_service.training.trainer import PRIOR_COLUMN, TrainConfig, train


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="simulator calibration diagnosis (outside the loop)")
    ap.add_argument("--data-seed", type=int, default=0, help="Simulated world.")
    ap.add_argument("--days", type=int, default=21, help="Days simulated (0..days-1).")
    ap.add_argument("--report-from", type=int, default=11, help="First reported day.")
    ap.add_argument("--impressions", type=int, default=20_000)
    ap.add_argument("--epochs", type=int, default=1, help="Passes per warm-started day.")
    ap.add_argument("--cold-epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--sparse-lr", type=float, default=5e-2)
    ap.add_argument("--lr-final", type=float, default=0.1, help="Warm-started days' decay (1: none).")
    ap.add_argument("--batch-size", type=int, default=0, help="0: the recipe's rows/64 rule.")
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--model", default="dnn")
    ap.add_argument("--model-args", default="{}", help="JSON merged into the model's arguments.")
    ap.add_argument("--loss", default="bce", help="Loss of warm-started days.")
    ap.add_argument("--alpha", type=float, default=0.1, help="reloop's α.")
    ap.add_argument("--recalibrate", type=int, default=0, help="Shift the output bias to the day's CTR.")
    ap.add_argument("--drop-fields", default="", help="Comma-separated fields left out of the spec.")
    ap.add_argument("--buffer-days", type=int, default=0, help="Earlier days replayed with each day.")
    ap.add_argument("--buffer-fraction", type=float, default=1.0, help="Sample of each replayed day.")
    ap.add_argument("--embedding-l2", type=float, default=0.0)
    ap.add_argument("--table-optimizer", default="adam", choices=["adam", "adagrad"])
    ap.add_argument("--id-dropout", type=float, default=0.0, help="Zero an id field's row at this rate.")
    return ap.parse_args()


def install_variants(a: argparse.Namespace) -> None:
    """Patch in the experiment-only variants (the project code itself is not changed)."""
    if a.id_dropout:

        def dropping(self: Any, batch: Any) -> torch.Tensor:
            emb = self.embedding(batch.cat, batch.multi)  # [B, F, D]
            if self.training and torch.is_grad_enabled():
                ids = [j for j, n in enumerate(self.embedding.buckets) if n >= 65536]
                keep = torch.ones(emb.shape[:2])
                keep[:, ids] = (torch.rand(emb.shape[0], len(ids)) >= a.id_dropout).float()
                emb = emb * keep.unsqueeze(-1)
            return self.head(emb, batch.num.to(torch.float32))  # type: ignore[no-any-return]

        models_module.CTRModel.forward = dropping  # type: ignore[method-assign]
    if a.embedding_l2:
        looked_up: dict[str, torch.Tensor] = {}

        def forward(self: Any, batch: Any) -> torch.Tensor:
            emb = self.embedding(batch.cat, batch.multi)
            if self.training and torch.is_grad_enabled():
                looked_up["emb"] = emb
            return self.head(emb, batch.num.to(torch.float32))  # type: ignore[no-any-return]

        get_loss = trainer_module.get_loss

        def with_l2(name: str) -> Any:
            loss = get_loss(name)

            def penalized(logits: Any, labels: Any, prior: Any, mask: Any, params: Any) -> Any:
                value = loss(logits, labels, prior, mask, params)
                emb = looked_up.pop("emb", None)
                return value if emb is None else value + a.embedding_l2 * emb.pow(2).sum(dim=(1, 2)).mean()

            return penalized

        models_module.CTRModel.forward = forward  # type: ignore[method-assign]
        trainer_module.get_loss = with_l2  # type: ignore[assignment]
    if a.table_optimizer == "adagrad":

        def adagrad(self: Any, block: Any, rows: Any, grads: Any, d: int, *_: Any) -> None:
            group = _[-1]
            v = block[:, d : 2 * d]
            v.addcmul_(grads, grads)
            rows.addcdiv_(grads, v.sqrt().add_(1e-8), value=-float(group["lr"]))

        RowSparseAdam._adam = adagrad  # type: ignore[method-assign]


def ratio(p: np.ndarray, ctr: np.ndarray, mask: np.ndarray) -> float:
    return round(float(p[mask].mean() / ctr[mask].mean()), 3) if mask.any() else float("nan")


def shift_bias(ckpt: Checkpoint, table: pa.Table) -> Checkpoint:
    """The checkpoint with its output bias moved so the mean prediction on ``table`` is its CTR."""
    p = np.clip(Predictor(ckpt).predict_batch(table).astype(np.float64), 1e-7, 1 - 1e-7)
    z = np.log(p / (1 - p))
    target = float(table.column("label").to_numpy().mean())
    delta = 0.0
    for _ in range(20):
        q = 1 / (1 + np.exp(-(z + delta)))
        delta -= (q.mean() - target) / max((q * (1 - q)).mean(), 1e-9)
    state = dict(ckpt.state_dict)
    state["out.bias"] = state["out.bias"] + float(delta)
    return replace(ckpt, state_dict=state)


def logloss(y: np.ndarray, p: np.ndarray) -> float:
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def main() -> None:
    a = parse()
    install_variants(a)
    torch.set_num_threads(1)
    sim = ClickSimulator(a.data_seed)
    start = date(2024, 1, 1)
    days = [sim.simulate_day(start + timedelta(days=k), a.impressions) for k in range(a.days)]

    def config(rows: int, *, cold: bool) -> TrainConfig:
        return TrainConfig(
            model=a.model,
            model_args={"embedding_dim": 16, "hidden": [256, 128, 64], "dropout": a.dropout}
            | json.loads(a.model_args),
            loss="bce" if cold else a.loss,
            loss_params={"alpha": a.alpha} if (a.loss == "reloop" and not cold) else {},
            lr=a.lr,
            sparse_lr=a.sparse_lr,
            epochs=a.cold_epochs if cold else a.epochs,
            batch_size=a.batch_size or auto_batch_size(rows),
            seed=0,
            threads=1,
            lr_final_fraction=1.0 if cold else a.lr_final,
            planned_rows=rows,
        )

    warm = pa.concat_tables([days[k][0] for k in range(4)])
    spec = sim.spec
    if a.drop_fields:
        gone = set(a.drop_fields.split(","))
        spec = replace(spec, categorical=tuple(f for f in spec.categorical if f.name not in gone))
    spec = fit_numeric(spec, warm.to_batches())
    ckpt = train(
        config=config(warm.num_rows, cold=True), spec=spec, batches=lambda: warm.to_batches(), progress=False
    ).checkpoint
    seen_users = set(warm.column("user_id").to_pylist())
    rows: dict[str, list[np.ndarray]] = {
        k: [] for k in ("p", "ctr", "y", "hour", "pos", "dev", "seen", "day")
    }
    by_day = []
    for k in range(4, a.days):
        table, ctr = days[k]
        p = Predictor(ckpt).predict_batch(table)
        users = table.column("user_id").to_numpy()
        for key, value in (
            ("p", p),
            ("ctr", ctr),
            ("y", table.column("label").to_numpy().astype(float)),
            ("hour", table.column("hour").to_numpy()),
            ("pos", table.column("position").to_numpy()),
            ("dev", np.array(table.column("device").to_pylist())),
            ("seen", np.isin(users, np.fromiter(seen_users, np.int64))),
            ("day", np.full(len(p), k)),
        ):
            rows[key].append(value)
        seen_users.update(users.tolist())
        train_table = table.append_column(PRIOR_COLUMN, pa.array(p.astype(np.float64)))
        if a.buffer_days:
            rng = np.random.default_rng(k)
            for j in range(max(4, k - a.buffer_days), k):
                old = days[j][0]
                take = np.sort(rng.choice(old.num_rows, int(old.num_rows * a.buffer_fraction), replace=False))
                old = old.take(pa.array(take))
                prior = Predictor(ckpt).predict_batch(old).astype(np.float64)
                train_table = pa.concat_tables(
                    [train_table, old.append_column(PRIOR_COLUMN, pa.array(prior))]
                )
        ckpt = train(
            config=config(train_table.num_rows, cold=False),
            spec=None,
            init=ckpt,
            batches=lambda t=train_table: t.to_batches(),
            progress=False,
        ).checkpoint
        if a.recalibrate:
            ckpt = shift_bias(ckpt, table)
        in_sample = Predictor(ckpt).predict_batch(table)
        by_day.append({"day": k, "served": ratio(p, ctr, p > 0), "in_sample": ratio(in_sample, ctr, p > 0)})
    r = {k: np.concatenate(v) for k, v in rows.items()}
    sel, rep = r["day"] < a.report_from, r["day"] >= a.report_from

    def gap(m: np.ndarray) -> float:
        return round(logloss(r["y"][m], r["p"][m]) / logloss(r["y"][m], r["ctr"][m]) - 1, 4)

    p, ctr = r["p"], r["ctr"]
    hours = [ratio(p, ctr, rep & (r["hour"] == h)) for h in range(24)]
    print(
        json.dumps(
            {
                "args": vars(a),
                "gap_selection_days": gap(sel),
                "gap_reported_days": gap(rep),
                "auc_reported_days": round(auc(r["y"][rep], p[rep]), 4),
                "calibration_reported_days": ratio(p, ctr, rep),
                "by_hour_min_max": [min(hours), max(hours)],
                "by_hour": hours,
                "by_position": {int(v): ratio(p, ctr, rep & (r["pos"] == v)) for v in np.unique(r["pos"])},
                "by_device": {str(v): ratio(p, ctr, rep & (r["dev"] == v)) for v in np.unique(r["dev"])},
                "users_seen_before": ratio(p, ctr, rep & r["seen"]),
                "users_never_seen": ratio(p, ctr, rep & ~r["seen"]),
                "served_by_day_min_max": [min(d["served"] for d in by_day), max(d["served"] for d in by_day)],
                "in_sample_by_day_min_max": [
                    min(d["in_sample"] for d in by_day),
                    max(d["in_sample"] for d in by_day),
                ],
                "by_day": by_day,
            }
        )
    )


if __name__ == "__main__":
    main()
