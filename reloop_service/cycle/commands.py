"""CLI of the cycle domain: ``reloop cycle run|backfill|runs``, ``reloop scheduler``, ``reloop demo``."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.table import Table

from reloop_service.clitools import (
    DATE_METAVAR,
    DataDirOption,
    JsonOption,
    LossName,
    app,
    bench_app,
    console,
    cycle_app,
    err_console,
    fail,
    flush_collapsed,
    load_settings,
    print_json,
    print_locations,
    progress_bar,
)

EXIT_HELD = 3  # `reloop cycle run` did nothing: another live process holds the date
EXIT_SKIPPED = 4  # the day was not trained on by design (no partition, too few rows or labels)
DateOption = Annotated[
    str,
    typer.Option(
        "--date",
        metavar=DATE_METAVAR,
        help="The cycle's period by its start: 2024-05-01 (daily), 2024-05-01T13 (RELOOP_CYCLE_PERIOD=1h).",
    ),
]
LogsOption = Annotated[
    str | None,
    typer.Option(
        "--logs", help="Click-log root, path or fsspec URI (default: $RELOOP_LOGS_URI or <data>/logs)."
    ),
]
StrictSpecOption = Annotated[
    bool,
    typer.Option(
        "--strict-spec",
        help="Refuse to run when RELOOP_SPEC_PATH differs from the production model's feature spec.",
    ),
]
NprocOption = Annotated[
    int | None,
    typer.Option(
        "--nproc", min=1, help="Training processes on this host (DDP via torchrun; default RELOOP_NPROC)."
    ),
]
STEPS = ("ready", "parent", "ingest", "priors", "train", "gate", "train_holdout", "register", "report")


def _parse_period(value: str, flag: str, settings: Any, *, last: bool = False) -> Any:
    """A period start in the configured period (``--to`` with a bare date: that day's last period)."""
    from reloop_service.data.period import Period, PeriodError

    step = settings.period_step
    try:
        period = Period.parse(value, step)
    except PeriodError as exc:
        raise fail(f"{flag}: {exc} (RELOOP_CYCLE_PERIOD={settings.cycle_period})") from None
    if last and "T" not in value.strip() and step < timedelta(days=1):
        return Period(period.start + timedelta(days=1) - step, step)
    return period


def _registry_errors(exc: Exception) -> typer.Exit:
    return fail(str(exc))


def _outcome_line(outcome: Any) -> str:
    if outcome.status == "skipped":
        why = outcome.reason if not outcome.error else f"{outcome.reason}: {outcome.error}"
        return f"{outcome.period_name}: [yellow]skipped[/] ({why}; run {outcome.run_id})"
    if outcome.status == "failed":
        where = f"run {outcome.run_id} attempt {outcome.attempt}"
        return f"{outcome.period_name}: [red]failed[/] ({where}): {outcome.error}"
    verdict = outcome.verdict
    cand = verdict.candidate if verdict is not None else None
    auc = cand.auc if cand is not None and cand.auc is not None else float("nan")
    logloss = cand.logloss if cand is not None and cand.logloss is not None else float("nan")
    return (
        f"{outcome.period_name}: [green]succeeded[/] version {outcome.version} {outcome.decision} "
        f"(auc {auc:.4f}, logloss {logloss:.4f})"
    )


def _check_spec(settings: Any, *, strict: bool) -> None:
    """Warn (or, with ``--strict-spec``, stop) when ``RELOOP_SPEC_PATH`` is not what production uses.

    Once a model exists the cycle trains with the production checkpoint's own spec and ignores the
    configured file, so an edited spec would otherwise be silently ignored.
    """
    from reloop_service.cycle.speccheck import SpecMismatch, spec_mismatch
    from reloop_service.registry.errors import RegistryError

    try:
        mismatch: SpecMismatch | None = spec_mismatch(settings)
    except RegistryError as exc:
        raise fail(str(exc)) from None
    except Exception as exc:  # an unreadable spec file
        raise fail(f"RELOOP_SPEC_PATH={settings.spec_path}: {exc}") from None
    if mismatch is None:
        return
    if strict:
        raise fail(mismatch.message() + " (--strict-spec)", code=2)
    err_console.print(f"[yellow]warning:[/] {mismatch.message()}", highlight=False, soft_wrap=True)


def _settings_for(data_dir: Path | None, logs: str | None, **overrides: Any) -> Any:
    settings = load_settings(data_dir, logs_uri=logs, **overrides)
    print_locations(settings)
    return settings


@cycle_app.command("run")
def cycle_run(
    date_: DateOption,
    force: Annotated[bool, typer.Option("--force", help="Re-run a date that already succeeded.")] = False,
    nproc: NprocOption = None,
    logs: LogsOption = None,
    strict_spec: StrictSpecOption = False,
    json_out: JsonOption = False,
    data_dir: DataDirOption = None,
) -> None:
    """Run the daily cycle for one date, exactly once (a date that succeeded is a no-op unless --force).

    Exit codes: 0 ran and succeeded, or the date had already succeeded (nothing to do); 1 failed;
    3 not run because another live process holds the date ("skipped (held)"); 4 skipped by design,
    with the reason (no partition, too few rows, too few clicks or non-clicks): production unchanged.
    """
    settings = _settings_for(data_dir, logs)
    day = _parse_period(date_, "--date", settings)
    from reloop_service.cycle.run import run_cycle
    from reloop_service.registry.errors import RegistryError

    _check_spec(settings, strict=strict_spec)
    nproc = nproc or settings.nproc
    if nproc > 1:
        from reloop_service.cycle.torchrun import TorchrunRunner

        outcome = TorchrunRunner(nproc)(settings=settings, cycle_date=day, force=force, actor="cli")
        _print_outcome(outcome, json_out=json_out)
        return
    try:
        with progress_bar(f"cycle {day}", total=len(STEPS), unit="steps") as advance:
            seen: list[str] = []

            def hook(name: str, _ctx: Any) -> None:
                if seen:
                    advance(1)
                seen.append(name)
                advance(
                    0, description=f"{name} ({STEPS.index(name) + 1 if name in STEPS else '?'}/{len(STEPS)})"
                )

            outcome = run_cycle(settings=settings, cycle_date=day, force=force, actor="cli", hook=hook)
            if outcome.status == "succeeded":
                advance(len(STEPS) - len(seen) + 1, description="done")
    except RegistryError as exc:
        raise _registry_errors(exc) from None
    flush_collapsed()
    _print_outcome(outcome, json_out=json_out)


def _print_outcome(outcome: Any, *, json_out: bool) -> None:
    """One cycle's outcome (one process or N ranks alike), then the exit code it implies."""
    if json_out:
        print_json(outcome.to_dict())
    else:
        console.print(_outcome_line(outcome))
        costs = outcome.record.costs
        if outcome.status == "succeeded" and costs:
            from reloop_service.cycle.run import describe_costs, trained_rows

            line = describe_costs(costs, rows=trained_rows(outcome.record))
            console.print(line, soft_wrap=True, highlight=False)
        if outcome.report is not None:
            console.print(f"report: {outcome.report.markdown_uri}")
    if outcome.status == "failed":
        raise typer.Exit(1)
    if outcome.status == "skipped" and outcome.reason == "held":
        raise typer.Exit(EXIT_HELD)
    if outcome.status == "skipped" and outcome.reason != "succeeded":
        raise typer.Exit(EXIT_SKIPPED)


@bench_app.command("soak")
def bench_soak(
    seconds: Annotated[float, typer.Option(help="Seconds of traffic.")] = 60.0,
    clients: Annotated[int, typer.Option(help="Concurrent keep-alive clients.")] = 4,
    flush_seconds: Annotated[
        float, typer.Option(help="RELOOP_ARCHIVE_FLUSH_SECONDS of the server (what a SIGKILL can lose).")
    ] = 5.0,
) -> None:
    """A real server under mixed predict traffic with promotions, rollbacks and a cycle, then SIGKILL:
    requests, errors, 5xx, predictions served vs archived, lost, peak RSS, versions served."""
    from reloop_service.cycle.soak import print_result, run_soak

    print_result(run_soak(seconds=seconds, clients=clients, flush_seconds=flush_seconds))


@app.command("gc")
def gc_command(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")] = False,
    json_out: JsonOption = False,
    data_dir: DataDirOption = None,
) -> None:
    """Remove artifacts no version references (older than RELOOP_GC_GRACE_S) and work folders of cycle
    attempts that are not running; print what was removed."""
    from reloop_service.cycle.gc import sweep
    from reloop_service.registry.errors import RegistryError

    settings = load_settings(data_dir)
    try:
        report = sweep(settings=settings, dry_run=dry_run)
    except RegistryError as exc:
        raise _registry_errors(exc) from None
    if json_out:
        print_json(report.to_dict())
        return
    verb = "would remove" if dry_run else "removed"
    for uri in report.artifacts.removed:
        console.print(f"{verb} artifact {uri}")
    for folder in report.workdirs:
        console.print(f"{verb} work folder {folder}")
    a = report.artifacts
    console.print(
        f"gc: {verb} {len(a.removed)} unreferenced artifact file(s) ({a.removed_bytes} bytes) and "
        f"{len(report.workdirs)} stale work folder(s); kept {a.kept_referenced} referenced, {a.kept_young} "
        f"younger than {settings.gc_grace_s:g}s, {report.kept_workdirs} live work folder(s)"
    )


Reprocess = Literal["none", "failed", "all"]


@cycle_app.command("backfill")
def cycle_backfill(
    from_: Annotated[str, typer.Option("--from", metavar=DATE_METAVAR, help="First date.")],
    to: Annotated[str, typer.Option("--to", metavar=DATE_METAVAR, help="Last date (inclusive).")],
    reprocess: Annotated[
        Reprocess,
        typer.Option(
            "--reprocess",
            help="Which days that already have a run to run again: none, failed or skipped ones "
            "(default), or all (forced).",
        ),
    ] = "failed",
    nproc: NprocOption = None,
    logs: LogsOption = None,
    strict_spec: StrictSpecOption = False,
    json_out: JsonOption = False,
    data_dir: DataDirOption = None,
) -> None:
    """Run every period of a range in order; report each, list what was not run, exit 1 if any failed.

    With RELOOP_CYCLE_PERIOD=1h, --from/--to take hours (2024-05-01T13); a bare --to date means its last hour.
    """
    settings = _settings_for(data_dir, logs)
    start = _parse_period(from_, "--from", settings)
    end = _parse_period(to, "--to", settings, last=True)
    if end < start:
        raise fail(f"--to {end} is before --from {start}")
    import functools

    from reloop_service.cycle.run import run_cycle
    from reloop_service.cycle.torchrun import TorchrunRunner
    from reloop_service.data.period import Period, period_range
    from reloop_service.registry import cycle_runs
    from reloop_service.registry.db import session_scope
    from reloop_service.registry.errors import RegistryError
    from reloop_service.registry.service import open_registry

    _check_spec(settings, strict=strict_spec)
    try:
        engine = open_registry(settings)
        with session_scope(engine, readonly=True) as session:
            runs = cycle_runs.list_cycle_runs(
                session, model_name=settings.model_name, date_from=start.day, date_to=end.day, limit=100_000
            )
    except RegistryError as exc:
        raise _registry_errors(exc) from None
    status = {r.period: r.status.value for r in runs}
    for r in runs:  # the parts of a merged catch-up run count as that run
        for part in r.details.period.parts if r.details.period else ():
            status.setdefault(str(part), r.status.value)
    todo: list[Period] = []
    not_run: list[tuple[Period, str]] = []
    for day in period_range(start, end):
        known = status.get(day.name)
        again = reprocess == "all" or (reprocess == "failed" and known not in ("succeeded", "running"))
        if known is None or again:
            todo.append(day)
        else:
            not_run.append((day, known))
    nproc = nproc or settings.nproc
    # The same runner as `cycle run` and the scheduler: in this process, or on N local ranks.
    runner = TorchrunRunner(nproc) if nproc > 1 else functools.partial(run_cycle, engine=engine)
    results: list[dict[str, Any]] = []
    unit = "days" if start.is_daily else "periods"
    with progress_bar("backfill", total=len(todo), unit=unit) as advance:
        for day in todo:
            advance(0, description=day.isoformat())
            outcome = runner(settings=settings, cycle_date=day, force=reprocess == "all", actor="backfill")
            if not json_out:
                console.print(_outcome_line(outcome))
            results.append(
                {
                    "date": day.isoformat(),
                    "status": outcome.status,
                    "reason": outcome.reason,
                    "version": outcome.version,
                    "decision": outcome.decision,
                    "error": outcome.error,
                }
            )
            advance(1)
    engine.dispose()
    flush_collapsed()
    counts = {s: sum(r["status"] == s for r in results) for s in ("succeeded", "failed", "skipped")}
    still_failed = [d for d, known in not_run if known == "failed"]
    payload = {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "ran": results,
        "not_run": [{"date": d.isoformat(), "status": known} for d, known in not_run],
        **counts,
    }
    if json_out:
        print_json(payload)
    else:
        for day, known in not_run:
            hint = "" if known == "succeeded" else " (use --reprocess failed)"
            console.print(f"{day}: not re-run (status {known}){hint}", soft_wrap=True)
        console.print(
            f"backfill {start}..{end}: {len(todo)} run ({counts['succeeded']} succeeded, "
            f"{counts['failed']} failed, {counts['skipped']} skipped), {len(not_run)} not re-run",
            soft_wrap=True,
        )
        if still_failed:
            days_text = ", ".join(d.isoformat() for d in still_failed)
            console.print(f"[red]still failed[/] (not re-run): {days_text}", soft_wrap=True)
    if counts["failed"] or still_failed:
        raise typer.Exit(1)


@cycle_app.command("runs")
def cycle_runs(
    limit: Annotated[int, typer.Option("--limit", min=1, help="Most recent dates to show.")] = 30,
    json_out: JsonOption = False,
    data_dir: DataDirOption = None,
) -> None:
    """Cycle runs, newest date first: status, attempt, version, coverage, gate."""
    from reloop_service.registry import cycle_runs
    from reloop_service.registry.db import session_scope
    from reloop_service.registry.errors import RegistryError
    from reloop_service.registry.service import open_registry

    settings = load_settings(data_dir)
    print_locations(settings, logs=False)
    try:
        engine = open_registry(settings)
        with session_scope(engine, readonly=True) as session:
            runs = cycle_runs.list_cycle_runs(session, model_name=settings.model_name, limit=limit)
        engine.dispose()
    except RegistryError as exc:
        raise _registry_errors(exc) from None
    if json_out:
        print_json([r.to_dict() for r in runs])
        return
    table = Table(title=f"cycle runs of model {settings.model_name!r}")
    for col in ("period", "status", "attempt", "version", "decision", "prior coverage", "auc", "error"):
        table.add_column(col)
    for r in runs:
        d = r.details
        cov = d.coverage
        coverage = f"{cov.archived}a/{cov.recomputed}r/{cov.missing}m" if cov else "-"
        auc = d.gate.candidate.auc if d.gate else None
        table.add_row(
            r.period,
            r.status.value,
            str(r.attempt),
            str(r.produced_version or "-"),
            str(d.decision or "-"),
            coverage,
            f"{auc:.4f}" if isinstance(auc, float) else "-",
            (r.error or "")[:80],
        )
    console.print(table)


@app.command("scheduler")
def scheduler_command(
    logs: LogsOption = None,
    strict_spec: StrictSpecOption = False,
    port: Annotated[
        int | None,
        typer.Option(
            "--port", help="Port of /metrics and /healthz (default RELOOP_SCHEDULER_PORT; 0 turns them off)."
        ),
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Run the daily cycle on a clock (catch-up on start, stop cleanly on SIGTERM)."""
    settings = _settings_for(data_dir, logs, scheduler_port=port)
    from reloop_service.cycle.scheduler import CycleScheduler
    from reloop_service.registry.errors import RegistryError
    from reloop_service.registry.service import open_registry

    try:
        open_registry(settings).dispose()  # refuse to start on an outdated schema
    except RegistryError as exc:
        raise _registry_errors(exc) from None
    _check_spec(settings, strict=strict_spec)
    CycleScheduler(settings).serve_forever()


@app.command("demo")
def demo_command(
    days: Annotated[int, typer.Option("--days", min=1, help="Simulated days.")] = 7,
    impressions: Annotated[int, typer.Option("--impressions", min=200, help="Impressions per day.")] = 20_000,
    loss: Annotated[LossName, typer.Option("--loss", help="Training loss of every cycle.")] = "reloop",
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
    period: Annotated[
        str, typer.Option("--period", help="One cycle per period: 1d (default), 1h or any divisor of a day.")
    ] = "1d",
) -> None:
    """The closed loop on embedded defaults: simulate users, serve, archive, train, gate, promote, repeat."""
    from reloop_service.cycle.demo import DemoError, run_demo

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
            period=period,
        )
    except DemoError as exc:
        raise fail(str(exc)) from None
