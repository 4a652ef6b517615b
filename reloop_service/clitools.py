"""Shared Typer apps and helpers; each domain registers its commands in ``<domain>/commands.py``.

Keeping the command groups here (not in ``cli.py``) lets every domain add commands without
import cycles, and keeps ``cli.py`` a plain list of what exists. This module and the commands
modules import only typer and rich at import time, so ``reloop --help`` stays fast: torch,
pandas, SQLAlchemy and pydantic are imported inside the commands that use them.
"""

from __future__ import annotations

import atexit
import gc
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console
from rich.logging import RichHandler
from typer.core import TyperOption

if TYPE_CHECKING:
    from pydantic import ValidationError

    from reloop_service.config import Settings

_value_type = TyperOption.display_type_rich


def _flag_type(self: TyperOption, ctx: Any) -> str | None:
    """Flags take no value: show nothing in the type column instead of typer 0.29's ``<bool>``."""
    if self.is_flag and self.metavar is None:
        return None
    return _value_type(self, ctx)


TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]


class _ReloopTyper(typer.Typer):
    """The root app: an invalid ``RELOOP_*`` setting anywhere becomes one line per field, exit 2."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # The process ends with the command: spare it the interpreter's last full garbage collection over
        # everything torch, Arrow and pandas allocated (about 0.5 s of CPU when torch was imported). Objects
        # are still released as the modules go; only unreachable cycles are left to the exit.
        atexit.register(gc.freeze)
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            lines = settings_error_lines(exc)
            if not lines:
                raise
            for line in lines:
                err_console.print(f"[bold red]error:[/] {line}", highlight=False, soft_wrap=True)
            sys.exit(2)


app = _ReloopTyper(
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
DATE_METAVAR = "YYYY-MM-DD"
# The values of Settings.model and Settings.loss (tests/test_cli.py checks that they stay equal).
ModelName = Literal["dnn", "deepfm", "dcnv2", "lr"]
LossName = Literal["bce", "label_smoothing", "distill", "reloop"]


class _Collapse(logging.Filter):
    """Collapse repeated warnings: past the 3rd of one kind (logger and message template), they are
    counted, not printed.

    ``flush_collapsed()`` reports the counts when a long command ends, so a catch-up over many days
    prints a few lines per kind of warning plus "N more like it" instead of hundreds of lines.
    """

    SHOWN = 3

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[tuple[str, str], int] = {}
        self.last: dict[tuple[str, str], str] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        n = self.seen.get(key, 0) + 1
        self.seen[key] = n
        if n > self.SHOWN:
            self.last[key] = record.getMessage()
            return False
        return True

    def summary(self) -> list[str]:
        return [
            f"{n - self.SHOWN} more warning(s) like this one were not shown: {self.last.get(key, '')}"
            for key, n in self.seen.items()
            if n > self.SHOWN
        ]


_collapse = _Collapse()


def flush_collapsed() -> None:
    """Print how often each collapsed warning repeated (called when a long command ends)."""
    for line in _collapse.summary():
        err_console.print(f"[yellow]warning:[/] {line}", highlight=False)
    _collapse.seen.clear()
    _collapse.last.clear()


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    # On a terminal, logging goes through the same rich console as the progress bars, so lines
    # never collide; captured output (pipes, CI) gets plain unwrapped lines.
    handler: logging.Handler
    if err_console.is_terminal:
        handler = RichHandler(console=err_console, show_path=False, rich_tracebacks=False, markup=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_collapse)
    handler.set_name("reloop-cli")
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "reloop-cli":
            root.removeHandler(old)
    if not root.handlers:  # as logging.basicConfig: an embedding process (pytest) keeps its own
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        # Alembic announces its dialect on every schema check; only migrations are news.
        for noisy in ("alembic", "matplotlib"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


# ------------------------------------------------------------------------------------------ settings
def _setting_name(loc: tuple[Any, ...], flags: dict[str, str]) -> str:
    field = str(loc[0]) if loc else "?"
    if field in flags:
        return flags[field]
    return f"RELOOP_{field.upper()}"


def _allowed(err: dict[str, Any]) -> str:
    ctx = err.get("ctx") or {}
    expected = ctx.get("expected")
    if expected:
        return f"allowed: {str(expected).replace(' or ', ', ').replace(chr(39), '')}"
    return str(err.get("msg", "invalid"))


def settings_error_lines(exc: BaseException, flags: dict[str, str] | None = None) -> list[str]:
    """One line per invalid field of a ``Settings`` validation error, naming the variable or flag.

    ``flags`` maps field names given as CLI flags to the flag (``{"data_dir": "--data-dir"}``);
    every other field is named by its environment variable. Empty for any other exception.
    """
    try:
        from pydantic import ValidationError
    except ImportError:  # pragma: no cover
        return []
    if not isinstance(exc, ValidationError) or exc.title != "Settings":
        return []
    return _lines(exc, flags or {})


def _lines(exc: ValidationError, flags: dict[str, str]) -> list[str]:
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(err.get("loc") or ())
        name = _setting_name(loc, flags)
        field = str(loc[0]) if loc else ""
        raw = os.environ.get(f"RELOOP_{field.upper()}") if name.startswith("RELOOP_") else err.get("input")
        shown = raw if isinstance(raw, str) else err.get("input")
        value = f"={shown!r}" if isinstance(shown, str | int | float) and len(str(shown)) < 80 else ""
        out.append(f"{name}{value}: {_allowed(dict(err))}")
    return out


def load_settings(data_dir: Path | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, with CLI flags that were given taking precedence.

    An invalid value (``RELOOP_LOSS=relop``) ends the command with one line per field that names
    the variable (or the flag) and the allowed values, not a traceback.
    """
    from pydantic import ValidationError

    from reloop_service.config import Settings

    given = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        given["data_dir"] = data_dir
    try:
        return Settings(**given)
    except ValidationError as exc:
        flags = {k: "--" + k.replace("_", "-") for k in given}
        for line in settings_error_lines(exc, flags):
            err_console.print(f"[bold red]error:[/] {line}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def print_locations(settings: Settings, *, logs: bool = True, registry: bool = True) -> None:
    """Say where this command reads and writes (to stderr, so ``--json`` output stays clean)."""
    parts = [f"data {settings.data_dir.resolve()}"]
    if registry:
        from sqlalchemy.engine import make_url  # the shared CLI tools import no domain

        url = make_url(settings.resolved_database_url).render_as_string(hide_password=True)
        parts.append(f"registry {url}")
    if logs:
        parts.append(f"logs {settings.resolved_logs_uri}")
    err_console.print("[dim]" + " · ".join(parts) + "[/]", highlight=False, soft_wrap=True)


def reloop_argv(*args: str) -> list[str]:
    """``reloop <args>`` as this interpreter runs it (``python -m reloop_service.cli``), for subprocesses."""
    return [sys.executable, "-m", "reloop_service.cli", *args]


def serve_argv(port: int, *args: str) -> list[str]:
    """``reloop serve`` on 127.0.0.1:``port``: the server the benchmarks, the soak and the tests start."""
    return reloop_argv("serve", "--host", "127.0.0.1", "--port", str(port), *args)


def print_json(payload: Any) -> None:
    """Print JSON for scripts (dates and paths as strings)."""
    typer.echo(json.dumps(payload, indent=2, default=str, sort_keys=True))


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a clear error to stderr and return the exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def progress_bar(label: str, *, total: float | None, unit: str = "") -> Iterator[Any]:
    """A rich progress bar with total, rate and ETA on the shared console (stderr).

    Yields ``advance(n, description=None)``; logging prints above the bar through the same console.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns: list[Any] = [
        TextColumn(f"[bold]{label}[/] {{task.description}}"),
        BarColumn(),
        MofNCompleteColumn(),
    ]
    if unit:
        columns.append(TextColumn(unit))
    columns += [TaskProgressColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=err_console, transient=False) as progress:
        task = progress.add_task("", total=total)

        def advance(n: float = 1, description: str | None = None, total_: float | None = None) -> None:
            kw: dict[str, Any] = {"advance": n}
            if description is not None:
                kw["description"] = description
            if total_ is not None:
                kw["total"] = total_
            progress.update(task, **kw)

        yield advance
