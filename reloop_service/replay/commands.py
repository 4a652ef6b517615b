"""``reloop replay movielens|parquet|synthetic``: the replay benchmark through the real loop."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from reloop_service.clitools import console, fail, replay_app

if TYPE_CHECKING:  # imported inside the commands: ``reloop --help`` does not pay for NumPy/Arrow/torch
    from reloop_service.replay.runner import ReplayConfig, ReplayData, SplitProtocol

# The names of replay.runner.STRATEGIES, spelled out so that --help need not import the runner
# (tests/test_cli.py checks that the two stay equal).
STRATEGIES = ("bce", "label_smoothing", "distill", "reloop", "full_retrain", "lr")

Strategies = Annotated[
    str, typer.Option("--strategies", help=f"Comma-separated, any of: {', '.join(STRATEGIES)}.")
]
Seeds = Annotated[int, typer.Option("--seeds", min=1, help="Number of seeds (0..N-1).")]
Model = Annotated[
    Literal["dnn", "deepfm", "dcnv2"],
    typer.Option("--model", help="Model of every strategy (the lr strategy always uses lr)."),
]
Lr = Annotated[float, typer.Option("--lr", help="Dense Adam learning rate.")]
SparseLr = Annotated[float, typer.Option("--sparse-lr", help="Embedding-table Adam learning rate.")]
Epochs = Annotated[int, typer.Option("--epochs", min=1, help="Epochs per cycle.")]
EmbDim = Annotated[int, typer.Option("--embedding-dim", min=1)]
Mlp = Annotated[str, typer.Option("--mlp", help="MLP widths, e.g. 256,128,64.")]
Batch = Annotated[
    int | None,
    typer.Option("--batch-size", min=1, help="Training batch size [default: the recipe's, by rows]."),
]
Dropout = Annotated[float, typer.Option("--dropout", min=0.0, max=0.95, help="MLP dropout.")]
LrFinal = Annotated[
    float,
    typer.Option(
        "--lr-final",
        min=0.0,
        max=1.0,
        help="Learning rates decay linearly over each warm-started cycle to this fraction.",
    ),
]
HoldoutFraction = Annotated[
    float,
    typer.Option(
        "--holdout-fraction",
        help="Share of each cycle's rows (by impression-id hash) the gate scores, trained on after it; "
        "within (0, 1).",
    ),
]
ClusterBy = Annotated[
    str | None,
    typer.Option("--cluster-by", help="Column whose values are the bootstrap's clusters [default: user_id]."),
]
Bootstrap = Annotated[
    int, typer.Option("--bootstrap", min=0, help="Bootstrap replicates for the paired 95% CI (0: off).")
]
_LOSS_DEFAULT = "[default: the loss's own, training/losses.py DEFAULT_PARAMS]"
Alpha = Annotated[float | None, typer.Option("--alpha", help=f"reloop's α {_LOSS_DEFAULT}.")]
Epsilon = Annotated[float | None, typer.Option("--epsilon", help=f"label_smoothing's ε {_LOSS_DEFAULT}.")]
Beta = Annotated[float | None, typer.Option("--beta", help=f"distill's β {_LOSS_DEFAULT}.")]
Tau = Annotated[float | None, typer.Option("--temperature", help=f"distill's τ {_LOSS_DEFAULT}.")]
Gate = Annotated[bool, typer.Option("--gate", help="Apply the quality gate (default: every cycle promotes).")]
Out = Annotated[
    Path, typer.Option("--out", help="Output folder (results.json, results.md, PNGs, predictions).")
]
Workers = Annotated[int, typer.Option("--workers", min=1, help="Runs in parallel (one process each).")]
Keep = Annotated[bool, typer.Option("--keep-data", help="Keep each run's registry/logs/archive folder.")]
Select = Annotated[
    bool,
    typer.Option("--select", help="Choose hyper-parameters on the selection bins (writes selection.json)."),
]
Params = Annotated[Path | None, typer.Option("--params", help="selection.json whose chosen values to use.")]
Warmup = Annotated[int, typer.Option("--warmup-bins", min=1, help="Bins trained on as the first cycle.")]
SelectBins = Annotated[str, typer.Option("--select-bins", help="Selection bins, FROM..TO.")]
ReportFrom = Annotated[int, typer.Option("--report-from", min=0, help="First reported bin.")]
LastBin = Annotated[int | None, typer.Option("--last-bin", help="Stop after this bin.")]


@dataclass(frozen=True)
class Options:
    """What every replay command shares."""

    strategies: list[str]
    seeds: list[int]
    config: ReplayConfig
    protocol: SplitProtocol
    out: Path
    workers: int
    keep: bool
    select: bool
    bootstrap: int


def _options(**kw: Any) -> Options:
    from reloop_service.replay.runner import ReplayConfig, SplitProtocol, StrategyConfig

    strategies = [s.strip() for s in kw["strategies"].split(",") if s.strip()]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise fail(f"--strategies: unknown {unknown or 'none given'}; choose from {', '.join(STRATEGIES)}")
    try:
        mlp = tuple(int(x) for x in kw["mlp"].split(",") if x.strip())
        lo, hi = (int(x) for x in kw["select_bins"].split(".."))
    except ValueError:
        raise fail(f"--mlp {kw['mlp']!r} or --select-bins {kw['select_bins']!r} is malformed") from None
    holdout = float(kw["holdout_fraction"])
    if not 0.0 < holdout < 1.0:
        raise fail(f"--holdout-fraction {holdout}: must be within (0, 1)")
    names = {"label_smoothing": ("epsilon",), "distill": ("beta", "temperature"), "reloop": ("alpha",)}
    # only what the user set: the rest resolve to the loss's defaults, the service's own
    loss_params = {loss: {k: float(kw[k]) for k in keys if kw[k] is not None} for loss, keys in names.items()}
    from reloop_service.training.losses import resolve_params

    for loss, params in loss_params.items():  # refuse a bad value before any cycle runs
        try:
            resolve_params(loss, params)
        except ValueError as exc:
            flags = ", ".join(f"--{k}" for k in params)
            raise fail(f"{flags}: {exc}") from None
    base = StrategyConfig(lr=kw["lr"], sparse_lr=kw["sparse_lr"], epochs=kw["epochs"])
    per = {
        s: StrategyConfig(
            loss_params=loss_params.get(s, {}), lr=base.lr, sparse_lr=base.sparse_lr, epochs=base.epochs
        )
        for s in STRATEGIES
    }
    if kw["params"] is not None:
        from reloop_service.replay.selection import load_params

        try:
            per.update(load_params(kw["params"]))
        except (OSError, ValueError, TypeError) as exc:
            raise fail(f"--params {kw['params']}: {exc}") from None
    config = ReplayConfig(
        model=kw["model"],
        embedding_dim=kw["embedding_dim"],
        mlp_hidden=mlp,
        batch_size=kw["batch_size"],
        dropout=kw["dropout"],
        lr_final_fraction=kw["lr_final"],
        holdout_fraction=holdout,
        cluster_by=kw["cluster_by"],
        default=base,
        strategies=per,
        gate=kw["gate"],
        period=_period_option(kw.get("period", "1d")),
    )
    protocol = SplitProtocol(
        warmup_bins=kw["warmup_bins"],
        select_from=lo,
        select_to=hi,
        report_from=kw["report_from"],
        last_bin=kw["last_bin"],
    )
    return Options(
        strategies=strategies,
        seeds=list(range(kw["seeds"])),
        config=config,
        protocol=protocol,
        out=kw["out"],
        workers=kw["workers"],
        keep=kw["keep_data"],
        select=kw["select"],
        bootstrap=kw["bootstrap"],
    )


def _period_option(value: str) -> str:
    from reloop_service.config import format_duration, parse_period_step

    try:
        return format_duration(parse_period_step(value))
    except ValueError as exc:
        raise fail(f"--period: {exc}") from None


def cost_lines(results: list[dict[str, Any]], period: str) -> list[str]:
    """Per cycle: the fixed cost (median, and its parts), the training time and rows/s, the wall time."""
    import statistics

    from reloop_service.config import parse_period_step
    from reloop_service.cycle.run import FIXED_COSTS

    bins = [b for r in results for b in r["bins"] if "fixed_seconds" in b]
    if not bins:
        return []
    med = statistics.median
    trained = sum(b.get("train_rows") or 0 for b in bins)
    train_s = sum(b["train_seconds"] for b in bins)
    parts = ", ".join(
        f"{k.replace('_', ' ')} {1000 * med(b.get(f'cost_{k}', 0.0) for b in bins):.0f}"
        for k in FIXED_COSTS
        if any(f"cost_{k}" in b for b in bins)
    )
    budget = parse_period_step(period).total_seconds()
    worst = max(b["cycle_seconds"] for b in bins)
    return [
        f"per cycle ({len(bins)} cycles, one per {period}): fixed cost median "
        f"{1000 * med(b['fixed_seconds'] for b in bins):.0f} ms ({parts}; ms)",
        f"training: median {1000 * med(b['train_seconds'] for b in bins):.0f} ms per cycle, "
        f"{trained / train_s:,.0f} training rows/s over {trained:,} rows"
        if train_s
        else "training: none",
        f"cycle wall time: median {med(b['cycle_seconds'] for b in bins):.2f} s, max {worst:.2f} s "
        f"({100 * worst / budget:.2f}% of the {period} period)",
    ]


def execute(data: ReplayData, opts: Options, *, title: str, command: str) -> dict[str, Any]:
    """Run the replay (or the selection) and write its outputs; returns the summary."""
    import time

    from reloop_service.replay.runner import RunSpec, run_many
    from reloop_service.replay.summary import summarize, write_outputs

    if opts.select:
        from reloop_service.replay.selection import select

        result = select(
            data,
            strategies=opts.strategies,
            config=opts.config,
            protocol=opts.protocol,
            seeds=opts.seeds,
            out_dir=opts.out,
            workers=opts.workers,
        )
        from reloop_service.replay.selection import selection_markdown

        console.print(selection_markdown(result), markup=False, highlight=False)
        console.print(f"chosen values: {opts.out / 'selection.json'} (pass it with --params)")
        return result
    runs = [
        RunSpec(
            strategy=s,
            seed=seed,
            config=opts.config,
            workdir=opts.out / "work" / f"{s}-s{seed}",
            predictions_path=opts.out / "predictions" / f"{s}-s{seed}.parquet",
            label=s,
        )
        for s in opts.strategies
        for seed in opts.seeds
    ]
    # unique labels for progress; the summary groups by strategy
    runs = [RunSpec(**{**r.__dict__, "label": f"{r.strategy}#s{r.seed}"}) for r in runs]
    started = time.perf_counter()
    results = run_many(data, runs, protocol=opts.protocol, workers=opts.workers, keep_data=opts.keep)
    total = time.perf_counter() - started
    if not opts.keep:
        shutil.rmtree(opts.out / "work", ignore_errors=True)
    for r in results:
        r["label"] = r["strategy"]
    summary = summarize(results, bins_from=opts.protocol.report_from, bootstrap=opts.bootstrap)
    paths = write_outputs(
        opts.out,
        title=title,
        runs=results,
        summary=summary,
        order=STRATEGIES,
        meta={
            "data": data.name,
            "command": command,
            "protocol": opts.protocol.__dict__,
            "config": opts.config.to_dict(),
            "strategies": opts.strategies,
            "seeds": opts.seeds,
            "workers": opts.workers,
            "total_wall_seconds": round(total, 1),
        },
    )
    console.print((opts.out / "results.md").read_text(), markup=False, highlight=False)
    console.print(f"total wall time {total:.0f} s with {opts.workers} worker(s)")
    for line in cost_lines(results, opts.config.period):
        console.print(line, markup=False, highlight=False)
    for name, path in paths.items():
        console.print(f"{name}: {path}")
    return summary


def _command(ctx: typer.Context) -> str:
    import sys

    return "reloop " + " ".join(sys.argv[1:]) if sys.argv else ctx.command_path


def _run(data_fn: Any, ctx: typer.Context, title: str, kw: dict[str, Any]) -> dict[str, Any]:
    from reloop_service.replay.runner import ReplayError

    opts = _options(**kw)
    try:
        data = data_fn()
        return execute(data, opts, title=title, command=_command(ctx))
    except ReplayError as exc:
        raise fail(str(exc)) from None


@replay_app.command("movielens")
def movielens(
    ctx: typer.Context,
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="The ml-100k folder (u.data, u.user, u.item).")
    ],
    strategies: Strategies = ",".join(STRATEGIES),
    seeds: Seeds = 5,
    model: Model = "dnn",
    lr: Lr = 1e-3,
    sparse_lr: SparseLr = 5e-2,
    epochs: Epochs = 1,
    embedding_dim: EmbDim = 16,
    mlp: Mlp = "256,128,64",
    batch_size: Batch = None,
    dropout: Dropout = 0.1,
    lr_final: LrFinal = 0.1,
    holdout_fraction: HoldoutFraction = 0.1,
    cluster_by: ClusterBy = None,
    bootstrap: Bootstrap = 1000,
    alpha: Alpha = None,
    epsilon: Epsilon = None,
    beta: Beta = None,
    temperature: Tau = None,
    gate: Gate = False,
    out: Out = Path("replay-ml100k"),
    workers: Workers = 2,
    keep_data: Keep = False,
    select: Select = False,
    params: Params = None,
    warmup_bins: Warmup = 4,
    select_bins: SelectBins = "4..10",
    report_from: ReportFrom = 11,
    last_bin: LastBin = None,
) -> None:
    """Replay MovieLens 100K with the protocol ml100k-weekly (docs/replay.md)."""
    from reloop_service.replay.movielens import MovieLensError
    from reloop_service.replay.sources import movielens_data

    kw = {
        k: v for k, v in locals().items() if k not in ("ctx", "data_dir", "MovieLensError", "movielens_data")
    }

    def load() -> ReplayData:
        from reloop_service.replay.runner import ReplayError

        try:
            return movielens_data(data_dir)
        except MovieLensError as exc:
            raise ReplayError(str(exc)) from None

    _run(load, ctx, "ml100k-weekly", kw)


@replay_app.command("synthetic")
def synthetic(
    ctx: typer.Context,
    bins: Annotated[
        int, typer.Option("--bins", min=2, help="Bins: simulated days, or periods with --period.")
    ] = 31,
    period: Annotated[
        str,
        typer.Option(
            "--period",
            help="One cycle per period (RELOOP_CYCLE_PERIOD): 1d, or 1h for hourly bins of each day.",
        ),
    ] = "1d",
    impressions: Annotated[int, typer.Option("--impressions", min=10, help="Impressions per day.")] = 3000,
    data_seed: Annotated[
        int, typer.Option("--data-seed", help="First simulator seed (the same data for every run).")
    ] = 0,
    data_seeds: Annotated[
        int,
        typer.Option(
            "--data-seeds",
            min=1,
            help="Simulated worlds (seeds data-seed..+N-1), each replayed in OUT/data<K>.",
        ),
    ] = 1,
    strategies: Strategies = ",".join(STRATEGIES),
    seeds: Seeds = 5,
    model: Model = "dnn",
    lr: Lr = 1e-3,
    sparse_lr: SparseLr = 5e-2,
    epochs: Epochs = 1,
    embedding_dim: EmbDim = 16,
    mlp: Mlp = "256,128,64",
    batch_size: Batch = None,
    dropout: Dropout = 0.1,
    lr_final: LrFinal = 0.1,
    holdout_fraction: HoldoutFraction = 0.1,
    cluster_by: ClusterBy = None,
    bootstrap: Bootstrap = 1000,
    alpha: Alpha = None,
    epsilon: Epsilon = None,
    beta: Beta = None,
    temperature: Tau = None,
    gate: Gate = False,
    out: Out = Path("replay-synthetic"),
    workers: Workers = 2,
    keep_data: Keep = False,
    select: Select = False,
    params: Params = None,
    warmup_bins: Warmup = 4,
    select_bins: SelectBins = "4..10",
    report_from: ReportFrom = 11,
    last_bin: LastBin = None,
) -> None:
    """Replay the click simulator (known true CTR: the table shows the gap to the Bayes-optimal logloss)."""
    from reloop_service.replay.sources import synthetic_data

    kw = {
        k: v
        for k, v in locals().items()
        if k not in ("ctx", "bins", "impressions", "data_seed", "data_seeds", "synthetic_data")
    }
    unit = "days" if period in ("1d", "24h") else f"periods of {period}"
    if data_seeds == 1:
        _run(
            lambda: synthetic_data(bins=bins, impressions=impressions, data_seed=data_seed, period=period),
            ctx,
            f"synthetic ({bins} {unit}, {impressions} impressions a day)",
            kw,
        )
        return
    from reloop_service.replay.summary import across_worlds

    worlds: dict[int, dict[str, Any]] = {}
    for d in range(data_seed, data_seed + data_seeds):
        console.print(f"[bold]simulated world {d}[/] ({d - data_seed + 1}/{data_seeds})")
        worlds[d] = _run(
            lambda d=d: synthetic_data(  # type: ignore[misc]
                bins=bins, impressions=impressions, data_seed=d, period=period
            ),
            ctx,
            f"synthetic world {d} ({bins} days x {impressions} impressions)",
            {**kw, "out": kw["out"] / f"data{d}"},
        )
    text = across_worlds(worlds, order=STRATEGIES)
    (kw["out"] / "worlds.md").write_text(text)
    console.print(text, markup=False, highlight=False)


@replay_app.command("parquet")
def parquet(
    ctx: typer.Context,
    logs: Annotated[str, typer.Option("--logs", help="Click-log root (dt=YYYY-MM-DD partitions).")],
    spec: Annotated[Path, typer.Option("--spec", help="Feature spec TOML.")],
    start: Annotated[str, typer.Option("--start", help="First day (bin 0), YYYY-MM-DD.")],
    end: Annotated[str, typer.Option("--end", help="Last day, YYYY-MM-DD.")],
    strategies: Strategies = ",".join(STRATEGIES),
    seeds: Seeds = 5,
    model: Model = "dnn",
    lr: Lr = 1e-3,
    sparse_lr: SparseLr = 5e-2,
    epochs: Epochs = 1,
    embedding_dim: EmbDim = 16,
    mlp: Mlp = "256,128,64",
    batch_size: Batch = None,
    dropout: Dropout = 0.1,
    lr_final: LrFinal = 0.1,
    holdout_fraction: HoldoutFraction = 0.1,
    cluster_by: ClusterBy = None,
    bootstrap: Bootstrap = 1000,
    alpha: Alpha = None,
    epsilon: Epsilon = None,
    beta: Beta = None,
    temperature: Tau = None,
    gate: Gate = False,
    out: Out = Path("replay-parquet"),
    workers: Workers = 2,
    keep_data: Keep = False,
    select: Select = False,
    params: Params = None,
    warmup_bins: Warmup = 1,
    select_bins: SelectBins = "1..1",
    report_from: ReportFrom = 2,
    last_bin: LastBin = None,
) -> None:
    """Replay your own click logs, one bin per day from --start to --end."""
    from reloop_service.data.spec import SpecError, load_spec
    from reloop_service.replay.sources import parquet_data

    try:
        first, last = date.fromisoformat(start), date.fromisoformat(end)
    except ValueError as exc:
        raise fail(f"--start/--end: {exc}") from None
    try:
        feature_spec = load_spec(spec)
    except (SpecError, OSError) as exc:
        raise fail(f"--spec {spec}: {exc}") from None
    kw = {
        k: v
        for k, v in locals().items()
        if k
        not in (
            "ctx",
            "logs",
            "spec",
            "start",
            "end",
            "first",
            "last",
            "feature_spec",
            "SpecError",
            "load_spec",
            "parquet_data",
        )
    }

    def load() -> ReplayData:
        from reloop_service.data.ingest import IngestError
        from reloop_service.replay.runner import ReplayError

        try:
            return parquet_data(logs_uri=logs, spec=feature_spec, start=first, end=last)
        except IngestError as exc:
            raise ReplayError(str(exc)) from None

    _run(load, ctx, f"parquet replay {start}..{end}", kw)
