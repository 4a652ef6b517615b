"""CLI commands of the serving domain (registered on the shared Typer apps in ``reloop_service.clitools``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from reloop_service.clitools import bench_app, fail

# ``reloop serve`` lives in ``reloop_service.compose``: it wires the cycle trigger into the app.


@bench_app.command("serve")
def bench_serve(
    requests: Annotated[int, typer.Option(help="Requests per measured configuration.")] = 2000,
    rate: Annotated[float, typer.Option(help="Request rate of the single-item latency run (req/s).")] = 200.0,
    concurrency: Annotated[int, typer.Option(help="Concurrent connections of the throughput runs.")] = 4,
    output: Annotated[
        str | None, typer.Option(help="Append a Serving section to this markdown file.")
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="Also run batches of 100 against --workers N (1: skip).")
    ] = 2,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="A new or empty folder for the bench's registry, demo model and archive parts, kept "
            "afterwards (default: a temporary folder, removed).",
        ),
    ] = None,
) -> None:
    """Start a real server with a demo model and load it from another process; print p50/p95/p99.

    Also measures a bare FastAPI route under the same load (the web stack's floor) and prints server
    CPU per request and per prediction, and the archive's share of it.
    """
    from reloop_service.serving.load_bench import BenchDirError, run_bench

    try:
        run_bench(
            requests=requests,
            rate=rate,
            concurrency=concurrency,
            output=output,
            data_dir=data_dir,
            workers=workers,
        )
    except BenchDirError as exc:
        raise fail(str(exc), code=2) from None
