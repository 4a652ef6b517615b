"""The ``reloop`` command: every domain's commands on one Typer app."""

from __future__ import annotations

from typing import Annotated

import typer

from reloop_service import compose as _compose  # noqa: F401  (reloop serve)
from reloop_service.clitools import app as app

# Importing each domain's commands module registers its commands on the shared apps.
from reloop_service.clitools import bench_app, console, reloop_argv
from reloop_service.cycle import commands as _cycle_commands  # noqa: F401
from reloop_service.data import commands as _data_commands  # noqa: F401
from reloop_service.registry import commands as _registry_commands  # noqa: F401
from reloop_service.replay import commands as _replay_commands  # noqa: F401
from reloop_service.serving import commands as _serving_commands  # noqa: F401
from reloop_service.training import commands as _training_commands  # noqa: F401

__all__ = ["app"]

HEAVY_MODULES = ("torch", "sqlalchemy", "pandas", "pyarrow", "numpy", "fastapi", "pydantic_settings")


@bench_app.command("cli")
def bench_cli(
    runs: Annotated[int, typer.Option("--runs", min=1, help="Timed runs of `reloop --help`.")] = 5,
) -> None:
    """Print how long `reloop --help` takes in a fresh interpreter, and which heavy modules it imports."""
    import statistics
    import subprocess
    import sys
    import time

    argv = reloop_argv("--help")
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        walls.append(time.perf_counter() - t0)
    probe = (
        f"import sys, reloop_service.cli; print(','.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))"
    )
    t0 = time.perf_counter()
    bare = subprocess.run([sys.executable, "-c", "pass"], check=True)
    python_s = time.perf_counter() - t0
    heavy = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    del bare
    console.print(
        f"reloop --help: median {statistics.median(walls):.3f} s, min {min(walls):.3f} s, "
        f"max {max(walls):.3f} s over {runs} runs (bare python start {python_s:.3f} s; target < 1 s)"
    )
    console.print(f"heavy modules imported by the CLI: {heavy.stdout.strip() or 'none'}")


if __name__ == "__main__":
    app()
