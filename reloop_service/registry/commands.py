"""CLI commands of the registry domain (registered on the shared Typer apps in ``reloop_service.clitools``).

``reloop db upgrade|downgrade|current``, ``reloop versions list|show``, ``reloop promote``,
``reloop rollback``, ``reloop history``. Every command but ``db upgrade``/``db current`` refuses a database
not at the Alembic head.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import typer
from rich.table import Table

from reloop_service.clitools import (
    DataDirOption,
    JsonOption,
    app,
    console,
    db_app,
    fail,
    load_settings,
    print_json,
    print_locations,
    versions_app,
)

if TYPE_CHECKING:  # imported inside the commands: ``reloop --help`` does not pay for SQLAlchemy
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

    from reloop_service.config import Settings
    from reloop_service.registry.entities import ModelVersion, RegistryEvent

T = TypeVar("T")


def _db() -> Any:
    from reloop_service.registry import db

    return db


def _store() -> Any:
    from reloop_service.registry import store

    return store


def _cycle_runs() -> Any:
    from reloop_service.registry import cycle_runs

    return cycle_runs


def _verify(settings: Settings, engine: Engine, version: int) -> None:
    """Load ``version``'s artifact for real (sha256, decode, warm-up); ``ArtifactUnusableError`` otherwise."""
    from reloop_service.registry.service import artifact_store
    from reloop_service.registry.verify import load_version

    with _db().session_scope(engine, readonly=True) as session:
        info = _store().get_version(session, model_name=settings.model_name, version=version)
    load_version(artifact_store(settings), info)


VersionStatusName = Literal["candidate", "production", "archived", "rejected", "failed"]

DatabaseUrlOption = Annotated[
    str | None,
    typer.Option("--database-url", help="SQLAlchemy URL (default: $RELOOP_DATABASE_URL or SQLite)."),
]
ActorOption = Annotated[str | None, typer.Option("--actor", help="Who is acting (default: cli:<user>).")]
ReasonOption = Annotated[str, typer.Option("--reason", "-r", help="Why (recorded in the audit trail).")]


def _settings(data_dir: Any, database_url: str | None) -> Settings:
    settings = load_settings(data_dir, database_url=database_url)
    print_locations(settings, logs=False)
    return settings


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
    except FileNotFoundError as err:
        raise fail(str(err)) from err
    except Exception as err:
        from reloop_service.registry.errors import RegistryError

        if isinstance(err, RegistryError):
            raise fail(str(err)) from err
        raise


def _with_registry(settings: Settings, fn: Callable[[Engine], T]) -> T:
    from reloop_service.registry.service import open_registry

    with _errors():
        engine = open_registry(settings)
        try:
            return fn(engine)
        finally:
            engine.dispose()


def _read(settings: Settings, fn: Callable[[Session], T]) -> T:
    def run(engine: Engine) -> T:
        with _db().session_scope(engine, readonly=True) as session:
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
            str(v.period or v.cycle_date or ""),
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
        engine = _db().make_engine(url)
        try:
            current = _db().current_revision(engine)
        finally:
            engine.dispose()
    if json_out:
        print_json({"database": _db().safe_url(url), "revision": current})
    else:
        console.print(f"registry database {_db().safe_url(url)} is at revision [bold]{current or 'base'}[/]")


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
        _db().upgrade(url, revision)
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
        _db().downgrade(url, revision)
    _print_revision(url, json_out)


@db_app.command("current")
def db_current(
    data_dir: DataDirOption = None, database_url: DatabaseUrlOption = None, json_out: JsonOption = False
) -> None:
    """Show the database's revision and the head this code needs."""
    settings = _settings(data_dir, database_url)
    url = settings.resolved_database_url
    with _errors():
        engine = _db().make_engine(url)
        try:
            current = _db().current_revision(engine)
        finally:
            engine.dispose()
        head = _db().head_revision()
    payload = {"database": _db().safe_url(url), "revision": current, "head": head, "at_head": current == head}
    if json_out:
        print_json(payload)
    else:
        state = "[green]at head[/]" if current == head else "[yellow]not at head: run `reloop db upgrade`[/]"
        console.print(f"{payload['database']}: revision {current or 'none'} (head {head}) {state}")


# ---------------------------------------------------------------------------------------- versions
@versions_app.command("list")
def versions_list(
    status: Annotated[VersionStatusName | None, typer.Option("--status", help="Only this status.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 50,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """List model versions, newest first."""
    settings = _settings(data_dir, database_url)
    versions = _read(
        settings,
        lambda s: _store().list_versions(s, model_name=settings.model_name, status=status, limit=limit),
    )
    if json_out:
        print_json([v.to_dict() for v in versions])
    else:
        console.print(_versions_table(versions, f"versions of {settings.model_name}"))


def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value).lower()
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _metrics_table(v: ModelVersion) -> Table:
    """Candidate and production figures of the gate side by side, then the rules it applied."""
    table = Table(title="metrics (hold-out)")
    table.add_column("metric")
    table.add_column(f"version {v.version}", justify="right")
    gate = v.gate_verdict or {}
    prod = gate.get("production") or {}
    if prod:
        table.add_column(f"production then (v{gate.get('production_version')})", justify="right")
    for key in sorted(k for k, val in v.metrics.items() if not isinstance(val, dict | list)):
        row = [key, _num(v.metrics[key])]
        if prod:
            row.append(_num(prod.get(key)))
        table.add_row(*row)
    return table


def _gate_table(v: ModelVersion) -> Table | None:
    from reloop_service.registry.records import GateVerdict

    if not v.gate_verdict:
        return None
    gate = GateVerdict.model_validate(v.gate_verdict)
    verdict = "passed" if gate.passed else f"rejected ({', '.join(gate.failed_rules)})"
    table = Table(title=f"gate: {verdict}")
    for column in ("rule", "passes when", "threshold", "value", "passed"):
        table.add_column(column, justify="left" if column in ("rule", "passes when") else "right")
    for rule in gate.rules:
        table.add_row(
            rule.name,
            f"value {rule.comparison} threshold",
            _num(rule.threshold),
            _num(rule.value),
            _num(rule.passed),
        )
    return table


@versions_app.command("show")
def versions_show(
    version: Annotated[int, typer.Argument(help="Version number.")],
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """One version: lineage, artifact, metrics, gate rules and its events (tables, or ``--json``)."""
    settings = _settings(data_dir, database_url)

    def read(session: Session) -> tuple[Any, list[RegistryEvent]]:
        lineage = _store().get_lineage(session, model_name=settings.model_name, version=version)
        return lineage, _store().list_events(session, model_name=settings.model_name, version=version)

    lineage, events = _read(settings, read)
    if json_out:
        print_json({**lineage.to_dict(), "events": [e.to_dict() for e in events]})
        return
    v = lineage.version
    about = Table(title=f"{v.model_name} version {v.version}", show_header=False)
    about.add_column("field", style="bold")
    about.add_column("value", overflow="fold")
    for label, value in (
        ("status", v.status.value + (" (rolled back)" if v.rolled_back_at else "")),
        ("parent chain", " <- ".join(str(p.version) for p in lineage.parents) or "(cold start)"),
        ("cycle period", str(v.period or v.cycle_date or "-")),
        ("data window", f"{v.data_first_day}..{v.data_last_day}" if v.data_first_day else "-"),
        ("created", v.created_at.strftime("%Y-%m-%d %H:%M:%S")),
        ("artifact", v.artifact.uri),
        ("sha256", v.artifact.sha256),
        ("size", f"{v.artifact.size:,} bytes"),
        ("feature spec", v.feature_spec_hash or "-"),
        ("rolled back at", str(v.rolled_back_at or "-")),
    ):
        about.add_row(label, value)
    console.print(about)
    console.print(_metrics_table(v))
    gate = _gate_table(v)
    if gate is not None:
        console.print(gate)
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
        from reloop_service.registry.service import artifact_store, promote_version
        from reloop_service.registry.verify import load_version

        # The admin API's promote: verify by loading, then one unconditional transaction.
        done = promote_version(
            engine,
            model_name=settings.model_name,
            version=version,
            actor=who,
            reason=reason,
            verify=lambda info: load_version(artifact_store(settings), info),
            force=force,
        )
        return done.production if done.changed else None

    production = _with_registry(settings, run)
    if production is None:
        if json_out:
            print_json({"version": version, "changed": False})
        else:
            console.print(
                f"version {version} of {settings.model_name} is already in production: nothing to do"
            )
        return
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
        with _db().session_scope(engine, readonly=True) as session:
            current, target = _store().rollback_plan(session, model_name=settings.model_name, to=to)
        _verify(settings, engine, target.version)  # checksum + real load before production moves
        with _db().session_scope(engine) as session:
            after = _store().rollback(
                session,
                model_name=settings.model_name,
                actor=who,
                reason=reason,
                to=target.version,
                force=force,
                expected_current=current,
            )
            return current, after

    previous, production = _with_registry(settings, run)
    from reloop_service.alerts import rollback_alert, send_alert

    send_alert(settings, rollback_alert(production, reason=reason, from_version=previous))
    if json_out:
        print_json(production.to_dict())
    else:
        console.print(f"rolled back: version [bold]{production.version.version}[/] is in production")


def cycle_timeline_rows(runs: list[Any]) -> list[dict[str, Any]]:
    """Cycle runs that produced no registry event (failed, skipped) as audit-timeline entries."""
    rows = []
    for r in runs:
        status = getattr(r.status, "value", str(r.status))
        if status in ("succeeded", "running"):
            continue
        details = r.details
        when = r.finished_at or r.heartbeat_at or r.started_at
        rows.append(
            {
                "id": None,
                "kind": f"cycle_{status}",
                "created_at": when.isoformat(),
                "version": r.produced_version,
                "from_version": details.parent_version,
                "to_version": None,
                "actor": str(details.actor or "-"),
                "reason": r.error or str((details.model_extra or {}).get("reason") or status),
                "cycle_date": r.period,  # the period's name: 2024-05-01, or 2024-05-01T13 hourly
                "run_id": r.id,
            }
        )
    return rows


@app.command("history")
def history_command(
    version: Annotated[int | None, typer.Option("--version", help="Only events naming this version.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 50,
    cycles: Annotated[
        bool,
        typer.Option("--cycles/--no-cycles", help="Include failed and skipped cycle runs (default: yes)."),
    ] = True,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """The audit trail: registrations, promotions, rollbacks, rejections, failed and skipped cycles."""
    settings = _settings(data_dir, database_url)

    def read(session: Session) -> tuple[list[RegistryEvent], list[Any]]:
        events = _store().list_events(session, model_name=settings.model_name, version=version, limit=limit)
        runs = (
            _cycle_runs().list_cycle_runs(session, model_name=settings.model_name, limit=limit)
            if cycles and version is None
            else []
        )
        return events, runs

    events, runs = _read(settings, read)
    rows = [e.to_dict() for e in events] + cycle_timeline_rows(runs)
    rows.sort(key=lambda r: str(r["created_at"]), reverse=True)
    rows = rows[:limit]
    if json_out:
        print_json(rows)
        return
    table = Table(title=f"history of {settings.model_name}")
    for column in ("id", "time", "kind", "version", "from", "to", "actor", "reason"):
        table.add_column(column, overflow="fold")
    for r in rows:
        kind = r["kind"]
        style = "red" if kind in ("cycle_failed", "failed", "rejected") else ""
        table.add_row(
            "" if r["id"] is None else str(r["id"]),
            str(r["created_at"])[:19].replace("T", " "),
            f"[{style}]{kind}[/]" if style else kind,
            "" if r["version"] is None else str(r["version"]),
            "" if r["from_version"] is None else str(r["from_version"]),
            "" if r["to_version"] is None else str(r["to_version"]),
            r["actor"],
            (f"{r['cycle_date']}: " if r.get("cycle_date") else "") + str(r["reason"] or ""),
        )
    console.print(table)
