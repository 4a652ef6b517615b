"""CLI commands of the data domain: ``reloop logs check``, ``reloop simulate``, ``reloop bench transform``."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from reloop_service.clitools import (
    DataDirOption,
    JsonOption,
    app,
    bench_app,
    console,
    fail,
    load_settings,
    print_json,
    print_locations,
)

if TYPE_CHECKING:  # imported inside the commands: ``reloop --help`` does not pay for torch
    from reloop_service.data.ingest import IngestReport
    from reloop_service.data.spec import FeatureSpec

logs_app = typer.Typer(help="Inspect and validate click logs.", no_args_is_help=True)
app.add_typer(logs_app, name="logs")


def _parse_date(value: str, flag: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise fail(f"{flag}: {value!r} is not a date (YYYY-MM-DD)") from None


def _spec(path: Path | None, settings_path: Path | None) -> FeatureSpec:
    from reloop_service.data.spec import SpecError, default_spec, load_spec

    try:
        chosen = path or settings_path
        return load_spec(chosen) if chosen else default_spec()
    except SpecError as exc:
        raise fail(str(exc)) from None


def print_report(report: IngestReport) -> None:
    """Rich table of an ingest report (shared by ``logs check`` and other domains' commands)."""
    table = Table(title="click logs " + ", ".join(d.isoformat() for d in report.days), show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("files", str(len(report.files)))
    table.add_row("rows read", f"{report.rows_read:,}")
    table.add_row("rows valid", f"{report.rows_valid:,}")
    table.add_row("rows quarantined", f"{report.rows_quarantined:,}")
    for reason, count in sorted(report.quarantined.items()):
        table.add_row(f"  {reason}", f"{count:,}")
    console.print(table)
    if report.rows_quarantined:
        console.print(f"quarantined rows (with a [bold]reason[/] column): {report.quarantine_uri}")


@logs_app.command("check")
def logs_check(
    date_: Annotated[
        str,
        typer.Option(
            "--date", help="First day, YYYY-MM-DD; with RELOOP_CYCLE_PERIOD=1h also one hour, YYYY-MM-DDTHH."
        ),
    ],
    logs: Annotated[str | None, typer.Option("--logs", help="Click-log root (path or fsspec URI).")] = None,
    days: Annotated[int, typer.Option("--days", min=1, help="Number of consecutive days.")] = 1,
    spec: Annotated[
        Path | None, typer.Option("--spec", help="Feature spec TOML (default: the demo spec).")
    ] = None,
    no_quarantine: Annotated[
        bool, typer.Option("--no-quarantine", help="Count bad rows without writing the quarantine.")
    ] = False,
    data_dir: DataDirOption = None,
    json_out: JsonOption = False,
) -> None:
    """Validate click logs: schema per file, bad rows to the quarantine, counts printed.

    With sub-daily periods (``dt=…/hr=HH`` partitions) a day checks every hour it has; an hour, that hour.
    """
    from reloop_service.data.ingest import EmptyDayError, IngestError, open_days

    settings = load_settings(data_dir, logs_uri=logs)
    print_locations(settings, registry=False)
    from reloop_service.data.period import Period, PeriodError

    step = settings.period_step
    wanted: list[Any]
    if step < timedelta(days=1):
        try:
            period = Period.parse(date_, step)
        except PeriodError as exc:
            raise fail(f"--date: {exc}") from None
        count = 1 if "T" in date_ else days * (timedelta(days=1) // step)
        wanted = [period.merged(count)]
    else:
        first = _parse_date(date_, "--date")
        wanted = [first + timedelta(days=i) for i in range(days)]
    feature_spec = _spec(spec, settings.spec_path)
    try:
        day_log = open_days(
            settings.resolved_logs_uri,
            wanted,
            feature_spec,
            storage_options=settings.storage_options(),
            quarantine=not no_quarantine,
            allow_empty_parts=step < timedelta(days=1),
        )
    except EmptyDayError as exc:
        raise fail(f"empty day: {exc}", code=3) from None
    except IngestError as exc:
        raise fail(str(exc), code=2) from None
    if json_out:
        print_json(day_log.report.to_dict())
    else:
        print_report(day_log.report)


@app.command("simulate")
def simulate(
    out: Annotated[
        str | None, typer.Option("--out", help="Click-log root to write (path or fsspec URI).")
    ] = None,
    days: Annotated[int, typer.Option("--days", min=1, help="Number of days.")] = 1,
    start: Annotated[str, typer.Option("--start", help="First day, YYYY-MM-DD.")] = "2024-01-01",
    impressions: Annotated[int, typer.Option("--impressions", min=1, help="Impressions per day.")] = 20_000,
    seed: Annotated[int, typer.Option("--seed", help="Simulator seed.")] = 0,
    data_dir: DataDirOption = None,
    json_out: JsonOption = False,
) -> None:
    """Write simulated click logs (the demo's data, matching the default feature spec)."""
    from reloop_service.data.simulator import ClickSimulator, bayes_logloss

    settings = load_settings(data_dir, logs_uri=out)
    print_locations(settings, registry=False)
    first = _parse_date(start, "--start")
    sim = ClickSimulator(seed, start=first)
    rows = []
    for i in range(days):
        day = first + timedelta(days=i)
        t0 = time.perf_counter()
        table, ctr = sim.simulate_day(day, impressions)
        uri = sim.write_day(
            settings.resolved_logs_uri, day, table, storage_options=settings.storage_options()
        )
        labels = table.column("label").to_numpy()
        rows.append(
            {
                "date": day.isoformat(),
                "rows": table.num_rows,
                "ctr": float(labels.mean()),
                "true_ctr": float(ctr.mean()),
                "bayes_logloss": bayes_logloss(ctr, labels),
                "uri": uri,
                "seconds": round(time.perf_counter() - t0, 3),
            }
        )
    if json_out:
        print_json(rows)
        return
    table_out = Table(title=f"simulated click logs (seed {seed})")
    for col in ("date", "rows", "ctr", "true_ctr", "bayes_logloss", "uri"):
        table_out.add_column(col)
    for r in rows:
        table_out.add_row(
            r["date"],
            f"{r['rows']:,}",
            f"{r['ctr']:.4f}",
            f"{r['true_ctr']:.4f}",
            f"{r['bayes_logloss']:.4f}",
            r["uri"],
        )
    console.print(table_out)


@bench_app.command("transform")
def bench_transform(
    records: Annotated[int, typer.Option("--records", min=1, help="Records per serving request.")] = 100,
    rows: Annotated[int, typer.Option("--rows", min=1, help="Rows per training batch.")] = 4096,
    seconds: Annotated[float, typer.Option("--seconds", min=0.1, help="Time per measurement.")] = 2.0,
) -> None:
    """Print transform throughput: serving (records -> tensors) and training (Parquet batch -> tensors)."""
    import torch

    from reloop_service.data.simulator import ClickSimulator
    from reloop_service.data.spec import default_spec
    from reloop_service.data.transforms import fit_numeric, records_to_batch, transform

    torch.set_num_threads(1)
    sim = ClickSimulator(0)
    table, _ = sim.simulate_day(sim.start, max(rows, records))
    spec = fit_numeric(default_spec(), table.to_batches())
    request = sim.impressions(sim.start, records)
    batch = table.slice(0, rows).combine_chunks().to_batches()[0]

    def measure(fn: Callable[[], object]) -> float:
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn()
            n += 1
        return (time.perf_counter() - t0) / n

    r2b = measure(lambda: records_to_batch(spec, request))
    rb = records_to_batch(spec, request)
    tr = measure(lambda: transform(spec, rb))
    train = measure(lambda: transform(spec, batch))
    console.print(
        f"serving, {records} records: records_to_batch {r2b * 1e6:.0f} us, transform {tr * 1e6:.0f} us"
    )
    console.print(f"  = {records / (r2b + tr):,.0f} records/s on one core")
    console.print(
        f"training, batch of {rows}: transform {train * 1e3:.2f} ms = {rows / train:,.0f} rows/s on one core"
    )
