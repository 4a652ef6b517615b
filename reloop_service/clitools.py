"""Shared Typer apps and helpers; each domain registers its commands in ``<domain>/commands.py``.

Keeping the command groups here (not in ``cli.py``) lets every domain add commands without
import cycles, and keeps ``cli.py`` a plain list of what exists.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from reloop_service.config import Settings

app = typer.Typer(
    name="reloop",
    help="reloop-service: keep a CTR model fresh with self-correcting daily cycles.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
bench_app = typer.Typer(help="Benchmarks that print measured figures.", no_args_is_help=True)
db_app = typer.Typer(help="Registry database migrations.", no_args_is_help=True)
versions_app = typer.Typer(help="Inspect model versions.", no_args_is_help=True)
cycle_app = typer.Typer(help="Run and inspect daily training cycles.", no_args_is_help=True)
replay_app = typer.Typer(help="Replay benchmarks through the real loop.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(db_app, name="db")
app.add_typer(versions_app, name="versions")
app.add_typer(cycle_app, name="cycle")
app.add_typer(replay_app, name="replay")

console = Console()
err_console = Console(stderr=True)

DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default: $RELOOP_DATA_DIR or ./reloop-data)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        # Alembic announces its dialect on every schema check; only migrations are news.
        logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)


def load_settings(data_dir: Path | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, with CLI flags that were given taking precedence."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        given["data_dir"] = data_dir
    return Settings(**given)


def print_json(payload: Any) -> None:
    """Print JSON for scripts (dates and paths as strings)."""
    typer.echo(json.dumps(payload, indent=2, default=str, sort_keys=True))


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a clear error to stderr and return the exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)
