"""CLI of the cycle domain: ``reloop cycle run|backfill|runs``, ``reloop scheduler``, ``reloop demo``."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from reloop_service.clitools import (
    DataDirOption,
    JsonOption,
    app,
    console,
    cycle_app,
    fail,
    load_settings,
    print_json,
)

DateOption = Annotated[str, typer.Option("--date", help="Cycle date, YYYY-MM-DD.")]


def _parse_date(value: str, flag: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise fail(f"{flag}: {value!r} is not a date (expected YYYY-MM-DD)") from None


def _registry_errors(exc: Exception) -> typer.Exit:
    return fail(str(exc))


def _outcome_line(outcome: Any) -> str:
    if outcome.status == "skipped":
        return f"{outcome.cycle_date}: skipped ({outcome.reason}; run {outcome.run_id})"
    if outcome.status == "failed":
        where = f"run {outcome.run_id} attempt {outcome.attempt}"
        return f"{outcome.cycle_date}: [red]failed[/] ({where}): {outcome.error}"
    gate = outcome.record.get("gate") or {}
    cand = gate.get("candidate") or {}
    return (
        f"{outcome.cycle_date}: [green]succeeded[/] version {outcome.version} {outcome.decision} "
        f"(auc {cand.get('auc', float('nan')):.4f}, logloss {cand.get('logloss', float('nan')):.4f})"
    )


@cycle_app.command("run")
def cycle_run(
    date_: DateOption,
    force: Annotated[bool, typer.Option("--force", help="Re-run a date that already succeeded.")] = False,
    nproc: Annotated[
        int | None,
        typer.Option(
            "--nproc", min=1, help="Training processes on this host (DDP via torchrun; default RELOOP_NPROC)."
        ),
    ] = None,
    json_out: JsonOption = False,
    data_dir: DataDirOption = None,
) -> None:
    """Run the daily cycle for one date, exactly once (a date that succeeded is a no-op unless --force)."""
    from reloop_service.cycle.run import run_cycle
    from reloop_service.registry.errors import RegistryError

    day = _parse_date(date_, "--date")
    settings = load_settings(data_dir)
    nproc = nproc or settings.nproc
    if nproc > 1:
        from reloop_service.training.distributed import launch_cycle

        code, summary = launch_cycle(
            nproc=nproc,
            cycle_date=day,
            force=force,
            data_dir=None if data_dir is None else str(data_dir),
            actor="cli",
        )
        if json_out:
            print_json(summary or {"status": "failed", "error": f"torchrun exited with {code}"})
        elif summary is not None:
            console.print(
                f"{day}: {summary.get('status')} on {nproc} ranks: version {summary.get('version')} "
                f"{summary.get('decision') or ''} {summary.get('error') or ''}".rstrip()
            )
        if code != 0:
            raise typer.Exit(1)
        return
    try:
        outcome = run_cycle(settings=settings, cycle_date=day, force=force, actor="cli")
    except RegistryError as exc:
        raise _registry_errors(exc) from None
    if json_out:
        print_json({k: v for k, v in outcome.__dict__.items() if k != "report"} | {"report": outcome.report})
    else:
        console.print(_outcome_line(outcome))
        if outcome.report is not None:
            console.print(f"report: {outcome.report.markdown_uri}")
    if outcome.status == "failed":
        raise typer.Exit(1)


@cycle_app.command("backfill")
def cycle_backfill(
    from_: Annotated[str, typer.Option("--from", help="First date, YYYY-MM-DD.")],
    to: Annotated[str, typer.Option("--to", help="Last date, YYYY-MM-DD (inclusive).")],
    reprocess: Annotated[
        str | None,
        typer.Option(
            "--reprocess",
            help="Also re-run days that 'failed', or 'all' days (forced). Default: only days never run.",
        ),
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Run every date of a range in order, with a progress bar; stops at nothing, reports each day."""
    from reloop_service.cycle.run import run_cycle
    from reloop_service.cycle.scheduler import daterange
    from reloop_service.registry import store
    from reloop_service.registry.db import session_scope
    from reloop_service.registry.errors import RegistryError
    from reloop_service.registry.service import open_registry

    start, end = _parse_date(from_, "--from"), _parse_date(to, "--to")
    if end < start:
        raise fail(f"--to {end} is before --from {start}")
    if reprocess not in (None, "failed", "all"):
        raise fail(f"--reprocess must be 'failed' or 'all', got {reprocess!r}")
    settings = load_settings(data_dir)
    try:
        engine = open_registry(settings)
        with session_scope(engine, readonly=True) as session:
            runs = store.list_cycle_runs(
                session, model_name=settings.model_name, date_from=start, date_to=end, limit=100_000
            )
    except RegistryError as exc:
        raise _registry_errors(exc) from None
    status = {r.cycle_date: r.status.value for r in runs}
    days = daterange(start, end)
    todo: list[date] = []
    for day in days:
        known = status.get(day)
        if reprocess == "all" or known is None or (reprocess == "failed" and known == "failed"):
            todo.append(day)
        else:
            console.print(f"{day}: not re-run (status {known}; use --reprocess)")
    failed = 0
    with Progress(
        TextColumn("[bold]backfill[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("", total=len(todo))
        for day in todo:
            progress.update(task, description=day.isoformat())
            outcome = run_cycle(
                settings=settings, cycle_date=day, force=reprocess == "all", actor="backfill", engine=engine
            )
            progress.console.print(_outcome_line(outcome))
            failed += outcome.status == "failed"
            progress.advance(task)
    engine.dispose()
    console.print(f"backfill {start}..{end}: {len(todo)} run, {failed} failed")
    if failed:
        raise typer.Exit(1)


@cycle_app.command("runs")
def cycle_runs(
    limit: Annotated[int, typer.Option("--limit", min=1, help="Most recent dates to show.")] = 30,
    json_out: JsonOption = False,
    data_dir: DataDirOption = None,
) -> None:
    """Cycle runs, newest date first: status, attempt, version, coverage, gate."""
    from reloop_service.registry import store
    from reloop_service.registry.db import session_scope
    from reloop_service.registry.errors import RegistryError
    from reloop_service.registry.service import open_registry

    settings = load_settings(data_dir)
    try:
        engine = open_registry(settings)
        with session_scope(engine, readonly=True) as session:
            runs = store.list_cycle_runs(session, model_name=settings.model_name, limit=limit)
        engine.dispose()
    except RegistryError as exc:
        raise _registry_errors(exc) from None
    if json_out:
        print_json([r.to_dict() for r in runs])
        return
    table = Table(title=f"cycle runs of model {settings.model_name!r}")
    for col in ("date", "status", "attempt", "version", "decision", "prior coverage", "auc", "error"):
        table.add_column(col)
    for r in runs:
        d = r.details or {}
        cov = d.get("coverage") or {}
        cand = (d.get("gate") or {}).get("candidate") or {}
        coverage = (
            f"{cov.get('archived', 0)}a/{cov.get('recomputed', 0)}r/{cov.get('missing', 0)}m" if cov else "-"
        )
        auc = cand.get("auc")
        table.add_row(
            r.cycle_date.isoformat(),
            r.status.value,
            str(r.attempt),
            str(r.produced_version or "-"),
            str(d.get("decision") or "-"),
            coverage,
            f"{auc:.4f}" if isinstance(auc, float) else "-",
            (r.error or "")[:80],
        )
    console.print(table)


@app.command("scheduler")
def scheduler_command(data_dir: DataDirOption = None) -> None:
    """Run the daily cycle on a clock (catch-up on start, stop cleanly on SIGTERM)."""
    from reloop_service.cycle.scheduler import CycleScheduler
    from reloop_service.registry.errors import RegistryError
    from reloop_service.registry.service import open_registry

    settings = load_settings(data_dir)
    try:
        open_registry(settings).dispose()  # refuse to start on an outdated schema
    except RegistryError as exc:
        raise _registry_errors(exc) from None
    CycleScheduler(settings).serve_forever()


@app.command("demo")
def demo_command(
    days: Annotated[int, typer.Option("--days", min=1, help="Simulated days.")] = 7,
    impressions: Annotated[int, typer.Option("--impressions", min=200, help="Impressions per day.")] = 20_000,
    loss: Annotated[str, typer.Option("--loss", help="bce, label_smoothing, distill or reloop.")] = "reloop",
    seed: Annotated[int, typer.Option("--seed", help="Simulator and training seed.")] = 0,
    no_serve: Annotated[
        bool, typer.Option("--no-serve", help="Stop the API at the end instead of leaving it serving.")
    ] = False,
    port: Annotated[
        int | None, typer.Option("--port", help="API port (default: RELOOP_API_PORT, 8000).")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Demo folder (default: <RELOOP_DATA_DIR>/demo).")
    ] = None,
) -> None:
    """The closed loop on embedded defaults: simulate users, serve, archive, train, gate, promote, repeat."""
    from reloop_service.cycle.demo import DemoError, run_demo

    if loss not in ("bce", "label_smoothing", "distill", "reloop"):
        raise fail(f"--loss must be bce, label_smoothing, distill or reloop, got {loss!r}")
    try:
        run_demo(
            days=days,
            impressions=impressions,
            loss=loss,
            seed=seed,
            serve=not no_serve,
            port=port,
            data_dir=data_dir,
            console=console,
        )
    except DemoError as exc:
        raise fail(str(exc)) from None
