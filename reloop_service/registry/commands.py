"""CLI commands of the registry domain (registered on the shared Typer apps in ``reloop_service.clitools``).

``reloop db upgrade|downgrade|current``, ``reloop versions list|show``, ``reloop promote``,
``reloop rollback``, ``reloop history``. Every command but ``db upgrade``/``db current`` refuses a database
not at the Alembic head.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from reloop_service.clitools import (
    DataDirOption,
    JsonOption,
    app,
    console,
    db_app,
    fail,
    load_settings,
    print_json,
    versions_app,
)
from reloop_service.config import Settings
from reloop_service.registry import db, store
from reloop_service.registry.entities import ModelVersion, RegistryEvent
from reloop_service.registry.errors import RegistryError
from reloop_service.registry.service import open_registry

T = TypeVar("T")

DatabaseUrlOption = Annotated[
    str | None,
    typer.Option("--database-url", help="SQLAlchemy URL (default: $RELOOP_DATABASE_URL or SQLite)."),
]
ActorOption = Annotated[str | None, typer.Option("--actor", help="Who is acting (default: cli:<user>).")]
ReasonOption = Annotated[str, typer.Option("--reason", "-r", help="Why (recorded in the audit trail).")]


def _settings(data_dir: Any, database_url: str | None) -> Settings:
    return load_settings(data_dir, database_url=database_url)


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no login name in some containers
        return "cli"


@contextmanager
def _errors() -> Iterator[None]:
    """Registry errors become one clear line on stderr and exit code 1 (no traceback)."""
    try:
        yield
    except RegistryError as err:
        raise fail(str(err)) from err
    except FileNotFoundError as err:
        raise fail(str(err)) from err


def _with_registry(settings: Settings, fn: Callable[[Engine], T]) -> T:
    with _errors():
        engine = open_registry(settings)
        try:
            return fn(engine)
        finally:
            engine.dispose()


def _read(settings: Settings, fn: Callable[[Session], T]) -> T:
    def run(engine: Engine) -> T:
        with db.session_scope(engine, readonly=True) as session:
            return fn(session)

    return _with_registry(settings, run)


def _versions_table(versions: list[ModelVersion], title: str) -> Table:
    table = Table(title=title)
    for column in ("version", "status", "parent", "cycle", "data window", "auc", "logloss", "created"):
        table.add_column(column)
    for v in versions:
        window = f"{v.data_first_day or ''}..{v.data_last_day or ''}" if v.data_first_day else ""
        auc, logloss = v.metrics.get("auc"), v.metrics.get("logloss")
        table.add_row(
            str(v.version),
            v.status.value + (" (rolled back)" if v.rolled_back_at else ""),
            "" if v.parent_version is None else str(v.parent_version),
            str(v.cycle_date or ""),
            window,
            f"{auc:.4f}" if isinstance(auc, float | int) else "",
            f"{logloss:.4f}" if isinstance(logloss, float | int) else "",
            v.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    return table


def _events_table(events: list[RegistryEvent], title: str) -> Table:
    table = Table(title=title)
    for column in ("id", "time", "kind", "version", "from", "to", "actor", "reason"):
        table.add_column(column)
    for e in events:
        table.add_row(
            str(e.id),
            e.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            e.kind.value,
            "" if e.version is None else str(e.version),
            "" if e.from_version is None else str(e.from_version),
            "" if e.to_version is None else str(e.to_version),
            e.actor,
            e.reason,
        )
    return table


# ---------------------------------------------------------------------------------------------- db
def _print_revision(url: str, json_out: bool) -> None:
    """Report the revision a migration left the database at (password masked)."""
    with _errors():
        engine = db.make_engine(url)
        try:
            current = db.current_revision(engine)
        finally:
            engine.dispose()
    if json_out:
        print_json({"database": db.safe_url(url), "revision": current})
    else:
        console.print(f"registry database {db.safe_url(url)} is at revision [bold]{current or 'base'}[/]")


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Option("--revision", help="Target revision.")] = "head",
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """Apply the registry migrations (creates the SQLite file if needed)."""
    settings = _settings(data_dir, database_url)
    url = settings.resolved_database_url
    with _errors():
        db.upgrade(url, revision)
    _print_revision(url, json_out)


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Option("--revision", help="Target revision (-1, base, or an id).")] = "-1",
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """Revert registry migrations (``--revision base`` drops every registry table)."""
    settings = _settings(data_dir, database_url)
    url = settings.resolved_database_url
    with _errors():
        db.downgrade(url, revision)
    _print_revision(url, json_out)


@db_app.command("current")
def db_current(
    data_dir: DataDirOption = None, database_url: DatabaseUrlOption = None, json_out: JsonOption = False
) -> None:
    """Show the database's revision and the head this code needs."""
    settings = _settings(data_dir, database_url)
    url = settings.resolved_database_url
    with _errors():
        engine = db.make_engine(url)
        try:
            current = db.current_revision(engine)
        finally:
            engine.dispose()
        head = db.head_revision()
    payload = {"database": db.safe_url(url), "revision": current, "head": head, "at_head": current == head}
    if json_out:
        print_json(payload)
    else:
        state = "[green]at head[/]" if current == head else "[yellow]not at head: run `reloop db upgrade`[/]"
        console.print(f"{payload['database']}: revision {current or 'none'} (head {head}) {state}")


# ---------------------------------------------------------------------------------------- versions
@versions_app.command("list")
def versions_list(
    status: Annotated[str | None, typer.Option("--status", help="Only this status.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 50,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """List model versions, newest first."""
    settings = _settings(data_dir, database_url)
    if status is not None and status not in {s.value for s in store.VersionStatus}:
        raise fail(
            f"--status must be one of {', '.join(s.value for s in store.VersionStatus)}, not {status!r}"
        )
    versions = _read(
        settings,
        lambda s: store.list_versions(s, model_name=settings.model_name, status=status, limit=limit),
    )
    if json_out:
        print_json([v.to_dict() for v in versions])
    else:
        console.print(_versions_table(versions, f"versions of {settings.model_name}"))


@versions_app.command("show")
def versions_show(
    version: Annotated[int, typer.Argument(help="Version number.")],
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """One version with its parents chain and its events."""
    settings = _settings(data_dir, database_url)

    def read(session: Session) -> tuple[Any, list[RegistryEvent]]:
        lineage = store.get_lineage(session, model_name=settings.model_name, version=version)
        return lineage, store.list_events(session, model_name=settings.model_name, version=version)

    lineage, events = _read(settings, read)
    if json_out:
        print_json({**lineage.to_dict(), "events": [e.to_dict() for e in events]})
        return
    v = lineage.version
    console.print(f"[bold]{v.model_name} version {v.version}[/]: {v.status.value}")
    for label, value in (
        ("parent chain", " <- ".join(str(p.version) for p in lineage.parents) or "(cold start)"),
        ("artifact", f"{v.artifact.uri} sha256={v.artifact.sha256} size={v.artifact.size}"),
        ("feature spec", v.feature_spec_hash or ""),
        ("data window", f"{v.data_first_day}..{v.data_last_day}"),
        ("cycle date", str(v.cycle_date or "")),
        ("metrics", str(v.metrics)),
        ("gate verdict", str(v.gate_verdict)),
        ("rolled back at", str(v.rolled_back_at or "")),
    ):
        console.print(f"  {label}: {value}")
    console.print(_events_table(events, "events"))


# ------------------------------------------------------------------------------ promote / rollback
@app.command("promote")
def promote_command(
    version: Annotated[int, typer.Argument(help="Version to put in production.")],
    reason: ReasonOption,
    actor: ActorOption = None,
    force: Annotated[bool, typer.Option("--force", help="Allow promoting a failed version.")] = False,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """Put a version in production (compare-and-set against the production you see now)."""
    settings = _settings(data_dir, database_url)
    who = _actor(actor)

    def run(engine: Engine) -> Any:
        with db.session_scope(engine, readonly=True) as session:
            seen = store.get_production(session, model_name=settings.model_name)
        with db.session_scope(engine) as session:
            return store.promote(
                session,
                model_name=settings.model_name,
                version=version,
                actor=who,
                reason=reason,
                expected_current=seen.version.version if seen else None,
                force=force,
            )

    production = _with_registry(settings, run)
    if json_out:
        print_json(production.to_dict())
    else:
        console.print(
            f"version [bold]{production.version.version}[/] of {settings.model_name} is in production"
        )


@app.command("rollback")
def rollback_command(
    reason: ReasonOption,
    to: Annotated[
        int | None, typer.Option("--to", help="Version to restore (default: the previous one).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Allow a rejected or failed target.")] = False,
    actor: ActorOption = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """Restore the version that was in production before the current one (from the audit trail)."""
    settings = _settings(data_dir, database_url)
    who = _actor(actor)

    def run(engine: Engine) -> Any:
        with db.session_scope(engine) as session:
            return store.rollback(
                session, model_name=settings.model_name, actor=who, reason=reason, to=to, force=force
            )

    production = _with_registry(settings, run)
    if json_out:
        print_json(production.to_dict())
    else:
        console.print(f"rolled back: version [bold]{production.version.version}[/] is in production")


@app.command("history")
def history_command(
    version: Annotated[int | None, typer.Option("--version", help="Only events naming this version.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 50,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """The audit trail: registrations, promotions, rollbacks, rejections, failures."""
    settings = _settings(data_dir, database_url)
    events = _read(
        settings,
        lambda s: store.list_events(s, model_name=settings.model_name, version=version, limit=limit),
    )
    if json_out:
        print_json([e.to_dict() for e in events])
    else:
        console.print(_events_table(events, f"history of {settings.model_name}"))
