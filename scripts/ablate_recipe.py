"""Recipe ablation on ml100k-weekly, outside the loop: the trainer and predictor on the same bins.

Each part of the training recipe switched on one at a time (docs/benchmarks.md, "Model quality").
It calls the project's own trainer, model, optimizer and loss code on the protocol of docs/replay.md
(warm-up on bins 0-3, then for every bin: score with the current model, train on the bin), without
the registry, predict path and archive that `reloop replay movielens` adds, so it runs in seconds.
The reported figures of the recipe itself come from `reloop replay movielens` (the real loop).

    python scripts/ablate_recipe.py --data-dir ../shared/datasets/ml-100k --buckets 4096 --shuffle 0
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

import reloop_service.training.models as models_module
import reloop_service.training.trainer as trainer_module
from reloop_service.data.spec import CategoricalField, FeatureSpec
from reloop_service.data.split import holdout_mask
from reloop_service.replay.movielens import movielens_spec, movielens_table
from reloop_service.training.checkpoint import Checkpoint
from reloop_service.training.evaluation import auc, logloss
from reloop_service.training.predict import Predictor
from reloop_service.training.recipe import day_schedule
from reloop_service.training.trainer import PRIOR_COLUMN, TrainConfig, train

ID_FIELDS = {"user_id", "item_id", "zip3"}


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="ml100k-weekly recipe ablation (outside the loop)")
    ap.add_argument("--data-dir", type=Path, required=True, help="The ml-100k folder.")
    ap.add_argument("--mode", default="inc", choices=["inc", "full"], help="incremental or full retrain")
    ap.add_argument("--buckets", type=int, default=65536, help="Buckets of user_id, item_id and zip3.")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--slr", type=float, default=5e-2, help="Embedding rows' learning rate.")
    ap.add_argument("--warm-lr", type=float, default=None, help="Warm-started bins' MLP rate (default --lr).")
    ap.add_argument("--bs", type=int, default=256, help="Batch of a warm-started bin.")
    ap.add_argument("--wbs", type=int, default=0, help="Batch from scratch (0: --bs).")
    ap.add_argument("--div", type=int, default=0, help="Batch = pow2(rows/div) in 128..4096 (0: fixed).")
    ap.add_argument("--epochs", type=int, default=1, help="Passes per warm-started bin.")
    ap.add_argument("--wepochs", type=int, default=1, help="Passes from scratch.")
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument(
        "--lr-final", type=float, default=1.0, help="Warm-started bins' learning-rate decay (1: none)."
    )
    ap.add_argument("--shuffle", type=int, default=1)
    ap.add_argument("--loss", default="bce")
    ap.add_argument("--alpha", type=float, default=None)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--last", type=int, default=30)
    ap.add_argument("--buffer", type=int, default=0, help="Earlier bins replayed with each bin (inc).")
    ap.add_argument("--buffer-fraction", type=float, default=0.3, help="Sample of each replayed bin.")
    ap.add_argument("--dense-wd", type=float, default=0.0, help="Decoupled weight decay (AdamW) on the MLP.")
    ap.add_argument("--model", default="dnn")
    ap.add_argument("--model-args", default="{}", help="JSON merged into the model's arguments.")
    ap.add_argument(
        "--embedding-l2", type=float, default=0.0, help="L2 on the batch's looked-up rows (per row, mean)."
    )
    ap.add_argument("--id-dropout", type=float, default=0.0, help="Zero the fields' rows at this rate.")
    ap.add_argument("--id-dropout-fields", default="user_id", help="Comma-separated fields for --id-dropout.")
    ap.add_argument(
        "--swa",
        type=int,
        default=0,
        help="From scratch: score the mean of this many snapshots of the last pass.",
    )
    ap.add_argument(
        "--ema", type=float, default=0.0, help="From scratch: score an EMA of the weights (decay/step)."
    )
    ap.add_argument(
        "--wide-lr",
        type=float,
        default=0.0,
        help="Add a first-order weight per value at this Adam rate (0: none).",
    )
    ap.add_argument(
        "--extra-pass",
        type=float,
        default=0.0,
        help="From scratch: one more pass at this fraction of the rates.",
    )
    ap.add_argument(
        "--extra-pass-sparse",
        type=float,
        default=None,
        help="The tables' fraction in --extra-pass (default: the same as the MLP's).",
    )
    ap.add_argument(
        "--settle-epochs",
        type=int,
        default=0,
        help="From scratch: TrainConfig.settle_epochs (the tables alone at a tenth of their rate).",
    )
    ap.add_argument(
        "--warm-settle-epochs", type=int, default=0, help="Warm-started bins: TrainConfig.settle_epochs."
    )
    ap.add_argument("--settle-fraction", type=float, default=0.1, help="TrainConfig.settle_fraction.")
    ap.add_argument(
        "--settle-no-dropout", action="store_true", help="TrainConfig.settle_dropout=False (dropout off)."
    )
    ap.add_argument(
        "--save-preds", type=Path, default=None, help="Save y, p, bin, user per seed (.npz) here."
    )
    ap.add_argument(
        "--unseen-mean",
        default="",
        help="Comma-separated fields whose never-trained rows score as the mean of their trained rows.",
    )
    ap.add_argument(
        "--recent-bins", type=int, default=0, help="Full retrain: the last N bins' rows twice (recency)."
    )
    ap.add_argument("--init-scale", type=float, default=1.0, help="Rows' initial values x this.")
    ap.add_argument(
        "--reset-optimizer",
        default="",
        choices=["", "dense", "sparse"],
        help="A warm start forgets this optimizer's state (moments and step counts).",
    )
    ap.add_argument("--batch-norm", action="store_true", help="BatchNorm1d after each of the MLP's Linear.")
    ap.add_argument(
        "--cycle-split",
        type=float,
        default=0.0,
        help="Train each bin as a cycle does: this hash share held out, trained on after the rest.",
    )
    ap.add_argument("--emb-dropout", type=float, default=0.0, help="Dropout on the looked-up embeddings.")
    ap.add_argument(
        "--born-again",
        type=float,
        default=0.0,
        help="Full retrain: a second model from scratch distilled (this beta, temperature 1) from the "
        "first's predictions on the same rows; the second is scored.",
    )
    return ap.parse_args()


def install_variants(a: argparse.Namespace, spec: FeatureSpec) -> None:
    """Patch in the experiment-only variants (the project code itself is not changed)."""
    if not (a.embedding_l2 or a.id_dropout or a.emb_dropout):
        return
    names = [f.name for f in spec.categorical]
    dropped = [names.index(f) for f in a.id_dropout_fields.split(",")]
    looked_up: dict[str, torch.Tensor] = {}

    def forward(self: Any, batch: Any) -> torch.Tensor:
        emb = self.embedding(batch.cat, batch.multi)  # [B, F, D]
        if self.training and torch.is_grad_enabled():
            if a.id_dropout:  # a zero row is what an id never seen in training looks up
                keep = torch.ones(emb.shape[:2])
                keep[:, dropped] = (torch.rand(emb.shape[0], len(dropped)) >= a.id_dropout).float()
                emb = emb * keep.unsqueeze(-1)
            if a.emb_dropout:  # inverted dropout on every looked-up element (the MLP's input)
                emb = torch.nn.functional.dropout(emb, a.emb_dropout)
            looked_up["emb"] = emb
        return self.head(emb, batch.num.to(torch.float32))  # type: ignore[no-any-return]

    models_module.CTRModel.forward = forward  # type: ignore[method-assign]
    plain = trainer_module.get_loss

    def get_loss(name: str) -> Any:
        fn = plain(name)

        def with_l2(logits: Any, labels: Any, prior: Any, mask: Any, params: Any) -> torch.Tensor:
            loss = fn(logits, labels, prior, mask, params)
            emb = looked_up.pop("emb", None)
            if a.embedding_l2 and emb is not None and torch.is_grad_enabled():
                loss = loss + a.embedding_l2 * emb.pow(2).sum(dim=(1, 2)).mean()
            return loss

        return with_l2

    trainer_module.get_loss = get_loss


def install_init_optimizer_variants(a: argparse.Namespace) -> None:
    """``--init-scale``, ``--reset-optimizer``, ``--batch-norm`` (sixth session's tries; none kept)."""
    import reloop_service.training.layers as layers_module

    if a.init_scale != 1.0:
        plain_init = layers_module.initial_rows

        def initial_rows(seed: int, ids: torch.Tensor, dim: int) -> torch.Tensor:
            return plain_init(seed, ids, dim) * a.init_scale

        layers_module.initial_rows = initial_rows
    if a.reset_optimizer:
        plain_load = trainer_module._load_optimizers

        def load(init: Any, dense_opt: Any, sparse_opt: Any, cfg: TrainConfig) -> None:
            keep_dense = None if a.reset_optimizer == "dense" else dense_opt
            keep_sparse = None if a.reset_optimizer == "sparse" else sparse_opt
            plain_load(init, keep_dense, keep_sparse, cfg)
            for opt, lr in ((dense_opt, cfg.lr), (sparse_opt, cfg.sparse_lr)):
                for group in opt.param_groups if opt is not None else []:
                    group["lr"] = lr

        trainer_module._load_optimizers = load
    if a.batch_norm:

        def mlp_init(self: Any, in_dim: int, hidden: Any, dropout: float = 0.0) -> None:
            torch.nn.Module.__init__(self)
            blocks: list[torch.nn.Module] = []
            prev = in_dim
            for width in hidden:
                blocks += [torch.nn.Linear(prev, width), torch.nn.BatchNorm1d(width), torch.nn.ReLU()]
                blocks += [torch.nn.Dropout(dropout)] if dropout > 0 else []
                prev = width
            self.out_dim = prev
            self.net = torch.nn.Sequential(*blocks)

        layers_module.MLP.__init__ = mlp_init  # type: ignore[method-assign]
        layers_module.MLP.forward = lambda self, x: self.net(x)  # type: ignore[method-assign]


def scoring_checkpoint(a: argparse.Namespace, ck: Checkpoint, spec: FeatureSpec) -> Checkpoint:
    """``ck`` as scored: with ``--unseen-mean``, a copy whose never-trained (all-zero) rows of those
    fields hold the mean of the field's trained rows (the next bin still warm-starts from ``ck``)."""
    if not a.unseen_mean:
        return ck
    names = [f.name for f in spec.categorical]
    offsets = np.cumsum([0] + [f.buckets for f in spec.categorical] + [m.buckets for m in spec.multi])
    (key,) = [k for k in ck.state_dict if k.endswith("table.weight")]
    table = ck.state_dict[key].clone()
    for name in a.unseen_mean.split(","):
        j = names.index(name)
        block = table[offsets[j] : offsets[j + 1]]
        trained = block.any(dim=1)
        if bool(trained.any()):
            block[~trained] = block[trained].mean(dim=0)
    return replace(ck, state_dict={**ck.state_dict, key: table})


WIDE_PARAMS: set[int] = set()  # ids of the first-order weights (their own group in the dense Adam)


class WideDNN(models_module.DNN):
    """The DNN plus a first-order weight per hashed value (zero at start), summed into its logit."""

    name = "widednn"

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        embedding_dim: int = 16,
        hidden: Any = (256, 128, 64),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(spec, embedding_dim=embedding_dim, hidden=hidden, dropout=dropout)
        self.wide = torch.nn.Parameter(torch.zeros(self.embedding.table.num_rows))
        WIDE_PARAMS.add(id(self.wide))

    def forward(self, batch: Any) -> torch.Tensor:
        e = self.embedding
        logit = self.head(e(batch.cat, batch.multi), batch.num.to(torch.float32))
        if e.n_cat:
            logit = logit + self.wide[batch.cat + e._cat_offsets].sum(dim=1)
        if e.n_multi:
            weights = e._pool_weights(batch.multi)
            logit = logit + (self.wide[batch.multi + e._multi_offsets] * weights).sum(dim=(1, 2))
        return logit


def install_wide(a: argparse.Namespace) -> None:
    """``--wide-lr``: register ``widednn`` and give its first-order weights their own Adam group."""
    models_module.MODELS["widednn"] = WideDNN
    plain_adam = torch.optim.Adam

    def adam(params: Any, lr: float, **kw: Any) -> torch.optim.Optimizer:
        params = list(params)
        wide = [p for p in params if id(p) in WIDE_PARAMS]
        rest = [p for p in params if id(p) not in WIDE_PARAMS]
        if not wide:
            return plain_adam(params, lr=lr, **kw)
        groups = [{"params": rest}, {"params": wide, "lr": a.wide_lr}]
        return plain_adam(groups, lr=lr, **kw)

    torch.optim.Adam = adam  # type: ignore[assignment,misc]
    plain_load = trainer_module._load_optimizers

    def load(init: Any, dense_opt: Any, sparse_opt: Any, cfg: TrainConfig) -> None:
        plain_load(init, dense_opt, sparse_opt, cfg)
        if dense_opt is not None and len(dense_opt.param_groups) == 2:  # a warm start reset every rate
            dense_opt.param_groups[1]["lr"] = a.wide_lr

    trainer_module._load_optimizers = load  # type: ignore[assignment]


class Averager:
    """Weights averaged over a from-scratch run: ``--swa`` snapshots of the last pass, or an ``--ema``.

    Embedding rows are lazy (all zero: never trained), so every table row is averaged over the
    snapshots (EMA steps) where it was non-zero only: a row first trained late is not pulled to zero,
    and a row never trained stays zero. Every other weight is a plain mean / a bias-corrected EMA.
    """

    def __init__(self, a: argparse.Namespace, model: Any, steps: int, last_pass_start: int) -> None:
        self.ema = a.ema
        self.state = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
        self.sum = {k: torch.zeros_like(v) for k, v in self.state.items()}
        self.mass = {
            k: torch.zeros(v.shape[0], 1) if k.endswith("table.weight") else torch.zeros(())
            for k, v in self.state.items()
        }
        n = max(a.swa, 1)
        span = steps - last_pass_start
        self.at = {last_pass_start + round(span * (i + 1) / n) for i in range(n)}

    def __call__(self, step: int, rows: int, loss: float) -> None:
        if self.ema:
            self.add(1.0 - self.ema, self.ema)
        elif step in self.at:
            self.add(1.0, 1.0)

    @torch.no_grad()
    def add(self, weight: float, keep: float) -> None:
        for k, v in self.state.items():
            self.sum[k].mul_(keep).add_(v, alpha=weight)
            mass = self.mass[k].mul_(keep)
            if mass.dim():  # a table: count the rows that hold trained values
                mass.add_(v.any(dim=1, keepdim=True).float(), alpha=weight)
            else:
                mass.add_(weight)

    @torch.no_grad()
    def averaged(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(state)
        for k in self.state:
            mass = self.mass[k]
            out[k] = torch.where(mass > 0, self.sum[k] / mass.clamp(min=1e-30), torch.zeros(()))
        return out


def batch_of(a: argparse.Namespace, rows: int, fixed: int) -> int:
    if not a.div:
        return fixed
    return int(min(4096, max(128, 2 ** round(np.log2(max(rows / a.div, 1))))))


def config(
    a: argparse.Namespace, *, loss: str, batch: int, epochs: int, seed: int, warm: bool = False
) -> TrainConfig:
    params = {"alpha": a.alpha} if (a.alpha is not None and loss == "reloop") else {}
    return TrainConfig(
        model=a.model,
        model_args={"embedding_dim": 16, "hidden": [256, 128, 64], "dropout": a.dropout}
        | json.loads(a.model_args),
        loss=loss,
        loss_params=params,
        lr=a.warm_lr if (warm and a.warm_lr is not None) else a.lr,
        sparse_lr=a.slr,
        epochs=epochs,
        batch_size=batch,
        seed=seed,
        threads=1,
        shuffle=bool(a.shuffle),
        lr_final_fraction=a.lr_final if warm else 1.0,
        settle_epochs=a.warm_settle_epochs if warm else a.settle_epochs,
        settle_fraction=a.settle_fraction,
        settle_dropout=not a.settle_no_dropout,
    )


def fit(
    a: argparse.Namespace, table: pa.Table, spec: FeatureSpec | None, cfg: TrainConfig, init: Any
) -> Checkpoint:
    """Train ``cfg`` on ``table``; with ``--cycle-split`` the way a cycle does (``cycle.steps``)."""
    if not a.cycle_split:
        return fit_rows(a, table, spec, cfg, init)
    held = holdout_mask(table.column("impression_id"), a.cycle_split)
    train_rows, holdout_rows = table.filter(pa.array(~held)), table.filter(pa.array(held))
    cfg = replace(cfg, batch_size=batch_of(a, train_rows.num_rows, cfg.batch_size))  # sized on the split
    candidate, holdout = day_schedule(cfg, train_rows=train_rows.num_rows, holdout_rows=holdout_rows.num_rows)
    ck = fit_rows(a, train_rows, spec, candidate, init)
    return fit_rows(a, holdout_rows, None, holdout, ck) if holdout_rows.num_rows else ck


def fit_rows(
    a: argparse.Namespace, table: pa.Table, spec: FeatureSpec | None, cfg: TrainConfig, init: Any
) -> Checkpoint:
    def batches() -> Any:
        return table.to_batches(65536)

    cold = init is None
    averager: list[Averager] = []
    on_batch = None
    plain_warm = trainer_module._warm_model
    if cold and (a.swa or a.ema):
        steps = trainer_module.steps_for(cfg, table.num_rows)
        last = steps - steps // cfg.epochs

        def warm_model(*args: Any) -> Any:
            model = plain_warm(*args)
            averager.append(Averager(a, model, steps, last))
            return model

        trainer_module._warm_model = warm_model

        def on_batch(step: int, rows: int, loss: float) -> None:
            averager[0](step, rows, loss)

    try:
        ck = train(
            config=cfg, spec=spec, batches=batches, init=init, progress=False, on_batch=on_batch
        ).checkpoint
    finally:
        trainer_module._warm_model = plain_warm
    if averager:
        ck.state_dict = averager[0].averaged(ck.state_dict)
    if cold and a.extra_pass:
        extra = replace(
            cfg,
            epochs=1,
            lr=cfg.lr * a.extra_pass,
            sparse_lr=cfg.sparse_lr * (a.extra_pass if a.extra_pass_sparse is None else a.extra_pass_sparse),
            seed=cfg.seed + 7919,  # another permutation than the first pass's
        )
        ck = train(config=extra, spec=None, batches=batches, init=ck, progress=False).checkpoint
    return ck


def one_seed(a: argparse.Namespace, t: pa.Table, spec: FeatureSpec, seed: int) -> dict[str, Any]:
    bins = t.column("bin").to_numpy()

    def rows(k: int, upto: bool = False) -> pa.Table:
        return t.filter(pa.array(bins <= k if upto else bins == k))

    started = time.time()
    warm = rows(3, upto=True)
    scratch = config(
        a, loss="bce", batch=batch_of(a, warm.num_rows, a.wbs or a.bs), epochs=a.wepochs, seed=seed
    )
    ck = fit(a, warm, spec, scratch, None)
    ys, ps, bs = [], [], []
    for k in range(4, a.last + 1):
        r = rows(k)
        p = Predictor(scoring_checkpoint(a, ck, spec)).predict_batch(r)
        ys.append(r.column("label").to_numpy().astype(float))
        ps.append(p)
        bs.append(np.full(len(p), k))
        if a.mode == "inc":
            with_prior = r.append_column(PRIOR_COLUMN, pa.array(p.astype(np.float64)))
            if a.buffer:
                rng = np.random.default_rng([seed, k])
                parts = [with_prior]
                for j in range(max(0, k - a.buffer), k):
                    old = rows(j)
                    take = np.sort(
                        rng.choice(old.num_rows, int(old.num_rows * a.buffer_fraction), replace=False)
                    )
                    old = old.take(pa.array(take))
                    prior = Predictor(ck).predict_batch(old).astype(np.float64)
                    parts.append(old.append_column(PRIOR_COLUMN, pa.array(prior)))
                with_prior = pa.concat_tables(parts)
            cfg = config(
                a,
                loss=a.loss,
                batch=batch_of(a, with_prior.num_rows, a.bs),
                epochs=a.epochs,
                seed=seed,
                warm=True,
            )
            ck = fit(a, with_prior, None, cfg, ck)
        else:
            upto = rows(k, upto=True)
            if a.recent_bins:  # the last bins' rows twice: a recency weight of 2
                upto = pa.concat_tables([upto, t.filter(pa.array((bins > k - a.recent_bins) & (bins <= k)))])
            cfg = config(
                a, loss="bce", batch=batch_of(a, upto.num_rows, a.wbs or a.bs), epochs=a.wepochs, seed=seed
            )
            ck = fit(a, upto, spec, cfg, None)
            if a.born_again:  # self-distillation: the teacher's in-sample predictions as priors
                teacher = Predictor(ck).predict_batch(upto).astype(np.float64)
                student = replace(
                    cfg,
                    loss="distill",
                    loss_params={"beta": a.born_again, "temperature": 1.0},
                    seed=seed + 1000,
                )
                ck = fit(a, upto.append_column(PRIOR_COLUMN, pa.array(teacher)), spec, student, None)
    y, p, b = np.concatenate(ys), np.concatenate(ps), np.concatenate(bs)
    sel, rep = (b >= 4) & (b <= 10), b >= 11
    if a.save_preds is not None:  # for a paired bootstrap over users (replay/stats.py)
        scored = t.filter(pa.array((bins >= 4) & (bins <= a.last)))
        order = np.argsort(scored.column("bin").to_numpy(), kind="stable")  # the order of ``y``
        users = scored.column("user_id").to_numpy(zero_copy_only=False)
        assert np.array_equal(scored.column("label").to_numpy()[order].astype(float), y)
        a.save_preds.mkdir(parents=True, exist_ok=True)
        np.savez(a.save_preds / f"s{seed}.npz", y=y, p=p, bin=b, user=users[order].astype(str))
    return {
        "seed": seed,
        "sel_auc": auc(y[sel], p[sel]),
        "rep_auc": auc(y[rep], p[rep]),
        "rep_ll": logloss(y[rep], p[rep]),
        "sel_ll": logloss(y[sel], p[sel]),
        "secs": round(time.time() - started, 1),
    }


def main() -> None:
    a = parse()
    if a.dense_wd:  # experiment only: the dense optimizer becomes AdamW (same state layout as Adam)
        torch.optim.Adam = functools.partial(torch.optim.AdamW, weight_decay=a.dense_wd)  # type: ignore[misc,assignment]
    torch.set_num_threads(1)
    t = movielens_table(a.data_dir)
    base = movielens_spec()
    fields = tuple(
        CategoricalField(f.name, a.buckets if f.name in ID_FIELDS else f.buckets) for f in base.categorical
    )
    spec = replace(base, categorical=fields)
    install_variants(a, spec)
    install_init_optimizer_variants(a)
    if a.wide_lr:
        install_wide(a)
        a.model = "widednn"
    results = []
    for seed in range(a.seeds):
        out = one_seed(a, t, spec, seed)
        print(json.dumps(out), flush=True)
        results.append(out)
    mean = {
        k: float(np.mean([r[k] for r in results])) for k in ("sel_auc", "rep_auc", "rep_ll", "sel_ll", "secs")
    }
    print("MEAN", json.dumps(mean))


if __name__ == "__main__":
    main()
