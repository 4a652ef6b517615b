"""The composition root: where serving meets the cycle (``reloop serve``).

Serving never imports the cycle. This module builds the app with the cycle trigger injected
(``create_app(settings, cycle_trigger=make_cycle_trigger(settings))``), for one process and for
each worker of ``reloop serve --workers N`` (``worker_app``, the factory uvicorn imports). The demo
and the replay compose the same way through ``serving.harness``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from reloop_service.clitools import DataDirOption, app, fail, load_settings, print_locations

if TYPE_CHECKING:
    from fastapi import FastAPI

    from reloop_service.config import Settings


WORKER_DIR_ENV = "RELOOP_WORKER_DIR"


@app.command("serve")
def serve(
    host: Annotated[
        str | None, typer.Option("--host", help="Bind address (default: RELOOP_API_HOST).")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default: RELOOP_API_PORT).")] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            help="Worker processes on the one port, each with its own model, watcher and archive parts "
            "(one torch thread each; use up to one per core).",
        ),
    ] = 1,
    data_dir: DataDirOption = None,
) -> None:
    """Serve predictions and the admin API with uvicorn.

    SIGTERM and SIGINT stop gracefully: no new connections, in-flight requests finish, then the
    archive is flushed to Parquet before the process exits (every worker's, with ``--workers``).
    """
    settings = load_settings(data_dir, api_host=host, api_port=port)
    print_locations(settings, logs=False)
    from reloop_service.registry.service import missing_sqlite_file

    missing = missing_sqlite_file(settings.resolved_database_url)
    if missing is not None:  # uvicorn would create an empty registry.db and then refuse it
        raise fail(
            f"registry database {missing} does not exist; run `reloop db upgrade` (or check RELOOP_DATA_DIR)"
        )
    import uvicorn

    options: dict[str, Any] = {
        "host": settings.api_host,
        "port": settings.api_port,
        "access_log": False,
        "timeout_graceful_shutdown": 30,
        "log_config": None,
    }
    if workers == 1:
        uvicorn.run(serving_app(settings, worker_dir=None), **options)
        return
    _serve_workers(settings, workers, options)


def serving_app(settings: Settings, *, worker_dir: Path | None) -> FastAPI:
    import torch

    from reloop_service.cycle.run import make_cycle_trigger
    from reloop_service.serving.app import create_app

    # Serving batches are small: one intra-op thread per process beats oversubscribing the cores.
    torch.set_num_threads(settings.threads or 1)
    with contextlib.suppress(RuntimeError):  # already set, or parallel work already ran here
        torch.set_num_interop_threads(1)
    # The admin API's cycle trigger (POST /v1/admin/cycles) runs the daily cycle in a background thread.
    return create_app(settings, worker_dir=worker_dir, cycle_trigger=make_cycle_trigger(settings))


def _serve_workers(settings: Settings, workers: int, options: dict[str, Any]) -> None:
    """Run ``workers`` uvicorn worker processes sharing one listening socket.

    The workers are fresh interpreters that build their app from the environment (``worker_app``),
    so the settings this command resolved (flags included) are passed down as ``RELOOP_*``. They
    share one temporary folder: Prometheus multiprocess files (``/metrics`` sums every worker) and
    the reload signal (``POST /v1/admin/reload`` reaches every worker within a watch interval).
    """
    import shutil
    import tempfile

    import uvicorn

    from reloop_service.serving.prometheus import MULTIPROC_ENV

    shared = Path(tempfile.mkdtemp(prefix="reloop-serve-"))
    (shared / "prometheus").mkdir()
    os.environ[MULTIPROC_ENV] = str(shared / "prometheus")
    os.environ[WORKER_DIR_ENV] = str(shared)
    os.environ["RELOOP_DATA_DIR"] = str(settings.data_dir)
    try:
        uvicorn.run("reloop_service.compose:worker_app", factory=True, workers=workers, **options)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def worker_app() -> FastAPI:
    """One worker's app under ``reloop serve --workers N`` (uvicorn calls this in each worker process).

    A replica id set in ``RELOOP_REPLICA_ID`` gets the worker's pid appended, so the workers'
    archive parts never share a name (without one, each archive picks a random id).
    """
    from reloop_service.config import Settings

    settings = Settings()
    if settings.replica_id:
        settings = settings.model_copy(update={"replica_id": f"{settings.replica_id}_{os.getpid()}"})
    return serving_app(settings, worker_dir=Path(os.environ[WORKER_DIR_ENV]))
