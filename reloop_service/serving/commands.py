"""CLI commands of the serving domain (registered on the shared Typer apps in ``reloop_service.clitools``)."""

from __future__ import annotations

from typing import Annotated

import typer

from reloop_service.clitools import DataDirOption, app, bench_app, fail, load_settings, print_locations


@app.command("serve")
def serve(
    host: Annotated[
        str | None, typer.Option("--host", help="Bind address (default: RELOOP_API_HOST).")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default: RELOOP_API_PORT).")] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Serve predictions and the admin API with uvicorn.

    SIGTERM and SIGINT stop gracefully: no new connections, in-flight requests finish, then the
    archive is flushed to Parquet before the process exits.
    """
    import torch
    import uvicorn

    from reloop_service.serving.app import create_app

    settings = load_settings(data_dir, api_host=host, api_port=port)
    print_locations(settings, logs=False)
    from reloop_service.registry.service import missing_sqlite_file

    missing = missing_sqlite_file(settings.resolved_database_url)
    if missing is not None:  # uvicorn would create an empty registry.db and then refuse it
        raise fail(
            f"registry database {missing} does not exist; run `reloop db upgrade` (or check RELOOP_DATA_DIR)"
        )
    # Serving batches are small: one intra-op thread per process beats oversubscribing the cores.
    torch.set_num_threads(settings.threads or 1)
    app_ = create_app(settings)
    # The admin API's cycle trigger (POST /v1/admin/cycles) runs the daily cycle in a background thread.
    from reloop_service.cycle.run import make_cycle_trigger

    app_.state.cycle_trigger = make_cycle_trigger(settings)
    uvicorn.run(
        app_,
        host=settings.api_host,
        port=settings.api_port,
        access_log=False,
        timeout_graceful_shutdown=30,
        log_config=None,
    )


@bench_app.command("serve")
def bench_serve(
    requests: Annotated[int, typer.Option(help="Requests per measured configuration.")] = 2000,
    rate: Annotated[float, typer.Option(help="Request rate of the single-item latency run (req/s).")] = 200.0,
    concurrency: Annotated[int, typer.Option(help="Concurrent connections of the throughput runs.")] = 4,
    output: Annotated[
        str | None, typer.Option(help="Append a Serving section to this markdown file.")
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Start a real server with a demo model and load it from another process; print p50/p95/p99."""
    from reloop_service.serving.bench import run_bench

    run_bench(requests=requests, rate=rate, concurrency=concurrency, output=output, data_dir=data_dir)
