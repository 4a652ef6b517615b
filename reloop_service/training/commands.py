"""CLI commands of the training domain (registered on the shared Typer apps in ``clitools``)."""

from __future__ import annotations

import json
import math
import platform
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer

from reloop_service.clitools import (
    DATE_METAVAR,
    DataDirOption,
    JsonOption,
    LossName,
    ModelName,
    app,
    bench_app,
    console,
    fail,
    load_settings,
    print_json,
    print_locations,
    progress_bar,
)


def _parse_json_object(text: str | None, flag: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(f"{flag}: not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise fail(f"{flag}: expected a JSON object like '{{\"alpha\": 0.3}}'")
    return value


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


@app.command("train")
def train_command(
    day: Annotated[str, typer.Option("--date", metavar=DATE_METAVAR, help="Last day to train on.")],
    out: Annotated[str, typer.Option("--out", help="Where to write the checkpoint (path or URI).")],
    days: Annotated[int, typer.Option("--days", help="Number of days ending at --date.")] = 1,
    from_checkpoint: Annotated[
        str | None, typer.Option("--from-checkpoint", help="Warm-start from this checkpoint.")
    ] = None,
    model: Annotated[
        ModelName | None, typer.Option("--model", help="Model architecture [default: RELOOP_MODEL, dnn].")
    ] = None,
    loss: Annotated[
        LossName | None, typer.Option("--loss", help="Training loss [default: RELOOP_LOSS, reloop].")
    ] = None,
    loss_params: Annotated[
        str | None, typer.Option("--loss-params", help="JSON object, e.g. '{\"alpha\": 0.3}'.")
    ] = None,
    model_args: Annotated[
        str | None,
        typer.Option(
            "--model-args",
            help="JSON object of embedding_dim, hidden, dropout, e.g. '{\"hidden\": [128, 64]}'.",
        ),
    ] = None,
    spec_file: Annotated[
        Path | None, typer.Option("--spec", help="Feature spec TOML (default: the demo spec).")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", help="Passes [default: the recipe's, 2 cold / 1 warm].")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Rows per step [default: scaled to the day].")
    ] = None,
    lr: Annotated[
        float | None, typer.Option("--lr", help="Dense (MLP) learning rate [default: 1e-3].")
    ] = None,
    sparse_lr: Annotated[
        float | None, typer.Option("--sparse-lr", help="Embedding-row learning rate [default: the recipe's].")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="Torch CPU threads.")] = None,
    holdout: Annotated[
        float | None,
        typer.Option(
            "--holdout", help="Share of rows (hash of impression id) held out for eval [default: 0.1]."
        ),
    ] = None,
    logs: Annotated[
        str | None,
        typer.Option(
            "--logs", help="Click-log root, path or fsspec URI (default: $RELOOP_LOGS_URI or <data>/logs)."
        ),
    ] = None,
    data_dir: DataDirOption = None,
    json_out: JsonOption = False,
) -> None:
    """Train a CTR model on days of click logs, report hold-out metrics and write a checkpoint."""
    from reloop_service.data.ingest import IngestError
    from reloop_service.data.spec import SpecError, default_spec, load_spec
    from reloop_service.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from reloop_service.training.recipe import recipe_config
    from reloop_service.training.train_days import train_days
    from reloop_service.training.trainer import TrainConfig, TrainError

    try:
        end_day = date.fromisoformat(day)
    except ValueError:
        raise fail(f"--date: expected YYYY-MM-DD, got {day!r}") from None
    try:
        init = load_checkpoint(from_checkpoint) if from_checkpoint else None
        if init is not None and spec_file is not None:
            raise fail("--spec and --from-checkpoint: a warm start uses the checkpoint's own feature spec")
        spec = load_spec(spec_file) if spec_file else default_spec()
        # The cycle's recipe with this command's flags on top of RELOOP_* settings.
        shape = _parse_json_object(model_args, "--model-args")
        unknown = sorted(set(shape) - {"embedding_dim", "hidden", "dropout"})
        if unknown:
            known = "embedding_dim, hidden, dropout"
            raise fail(f"--model-args: unknown key(s) {', '.join(unknown)} (known: {known})")
        settings = load_settings(
            data_dir,
            logs_uri=logs,
            embedding_dim=shape.get("embedding_dim"),
            mlp_hidden=tuple(shape["hidden"]) if "hidden" in shape else None,
            dropout=shape.get("dropout"),
            model=model,
            loss=loss,
            loss_params=_parse_json_object(loss_params, "--loss-params") if loss_params else None,
            epochs=epochs,
            cold_start_epochs=epochs,
            batch_size=batch_size,
            learning_rate=lr,
            sparse_learning_rate=sparse_lr,
            seed=seed,
            threads=threads,
            holdout_fraction=holdout,
        )
        if init is not None and init.model_name != settings.model:
            settings = settings.model_copy(update={"model": init.model_name})

        def config(rows: int) -> TrainConfig:
            return recipe_config(settings, loss=settings.loss, rows=rows, cold=init is None)

        print_locations(settings, registry=False)
        with progress_bar("train", total=None, unit="rows") as advance:
            outcome = train_days(
                logs_uri=settings.resolved_logs_uri,
                end_day=end_day,
                days=days,
                spec=spec,
                config=config,
                init=init,
                holdout=settings.holdout_fraction,
                storage_options=settings.storage_options(),
                progress=False,  # this bar instead of the trainer's: it knows the total
                on_total=lambda rows: advance(0, total_=rows),
                on_batch=lambda _step, rows, loss: advance(rows, description=f"loss {loss:.4f}"),
            )
        save_checkpoint(outcome.result.checkpoint, out)
    except (IngestError, SpecError, CheckpointError, TrainError, ValueError) as exc:
        raise fail(str(exc)) from None

    ckpt = outcome.result.checkpoint
    metrics = {k: ckpt.metrics.get(k) for k in ("auc", "logloss", "calibration", "mean_pred", "ctr", "rows")}
    summary = {
        "checkpoint": out,
        "days": [d.isoformat() for d in outcome.days],
        "warm_start": from_checkpoint,
        "model": ckpt.model_name,
        "loss": ckpt.loss,
        "loss_params": ckpt.loss_params,
        "ingest": outcome.ingest.to_dict(),
        "train_rows": outcome.train_rows,
        "eval_rows": outcome.eval_rows,
        "prior_source": outcome.prior_source,
        "prior_coverage": outcome.result.coverage,
        "first_batch_loss": outcome.result.first_batch_loss,
        "final_loss": outcome.result.losses[-1],
        "eval": metrics,
        "notes": outcome.result.notes,
    }
    if json_out:
        print_json(summary)
        return
    report = outcome.ingest
    console.print(
        f"ingested {report.rows_valid:,} valid of {report.rows_read:,} rows from {len(report.files)} file(s)"
        + (
            f"; quarantined {report.quarantined} -> {report.quarantine_uri}"
            if report.rows_quarantined
            else ""
        )
    )
    for note in outcome.result.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(
        f"trained {ckpt.model_name}/{ckpt.loss} on {outcome.train_rows:,} rows "
        f"({', '.join(d.isoformat() for d in outcome.days)}), prior from {outcome.prior_source}"
    )
    if outcome.eval_rows:
        console.print(
            f"eval on {outcome.eval_rows:,} held-out rows: AUC {_fmt(metrics['auc'])}  "
            f"logloss {_fmt(metrics['logloss'])}  calibration {_fmt(metrics['calibration'])}"
        )
    console.print(f"checkpoint written to {out}")


@bench_app.command("train")
def bench_train_command(
    rows: Annotated[int, typer.Option("--rows", help="Generated rows.")] = 150_000,
    repeats: Annotated[
        int, typer.Option("--repeats", help="Alternating runs of each; the best is kept.")
    ] = 3,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 4096,
    threads: Annotated[
        int,
        typer.Option(
            "--threads",
            help="Torch CPU threads for the model (the data path runs on its own thread). Default 1: on 2 "
            "shared cores 2 OpenMP threads collapse under contention (see docs/benchmarks.md).",
        ),
    ] = 1,
    compare_stock: Annotated[
        bool, typer.Option("--compare-stock", help="Also time nn.Embedding(sparse=True) + SparseAdam.")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Training rows/s of the default DNN through Parquet, ingestion and transform vs a frozen ceiling."""
    from reloop_service.training.throughput_bench import (
        BUCKETS,
        EMBEDDING_DIM,
        FIELDS,
        HIDDEN,
        run_train_bench,
    )

    figures = run_train_bench(
        rows=rows, batch_size=batch_size, threads=threads, repeats=repeats, compare_stock=compare_stock
    )
    payload = figures.to_dict() | {"machine": f"{platform.machine()} {platform.processor() or ''}".strip()}
    if json_out:
        print_json(payload)
        return
    console.print(
        f"DNN emb {EMBEDDING_DIM}, MLP {'-'.join(map(str, HIDDEN))}, "
        f"{FIELDS} fields x 2^{BUCKETS.bit_length() - 1} buckets, batch {figures.batch_size}, "
        f"{figures.rows:,} rows, {figures.threads} torch thread(s)"
    )
    console.print(f"ingest open (validation pass, untimed below): {figures.ingest_open_s:.2f} s")
    console.print(
        f"measured (Parquet -> ingest -> transform -> train, RowSparseAdam): "
        f"{figures.measured_rows_per_s:,.0f} rows/s steady, "
        f"{figures.measured_end_to_end_rows_per_s:,.0f} rows/s incl. model build "
        f"(end to end / steady: {figures.end_to_end_ratio:.0%}, target >= 50%)"
    )
    console.print(
        f"ceiling (pre-built tensors, frozen tables):            {figures.ceiling_rows_per_s:,.0f} rows/s"
    )
    if figures.stock_sparse_adam_rows_per_s:
        console.print(
            f"stock nn.Embedding(sparse=True)+SparseAdam (pre-built):  "
            f"{figures.stock_sparse_adam_rows_per_s:,.0f} rows/s "
            f"({figures.stock_sparse_adam_rows_per_s / figures.ceiling_rows_per_s:.0%} of ceiling)"
        )
    console.print(
        f"ratio measured / ceiling: [bold]{figures.ratio:.0%}[/] (target >= 75%; best of {repeats} each)"
    )
    console.print(
        f"in process CPU time (all threads, data path included): measured "
        f"{figures.measured_rows_per_cpu_s:,.0f}, ceiling {figures.ceiling_rows_per_cpu_s:,.0f} "
        f"rows per CPU-s, "
        f"ratio {figures.cpu_ratio:.0%}"
    )
    for name, values in figures.samples.items():
        if values:
            console.print(f"  {name} runs: {', '.join(f'{v:,.0f}' for v in values)} rows/s")
