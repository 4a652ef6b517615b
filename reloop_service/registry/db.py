"""Engines, transactions and Alembic migrations of the registry database.

Where the migrations live: the Alembic scripts are the top-level ``migrations/`` folder of the repository.
The package finds them, in order, at ``$RELOOP_MIGRATIONS_DIR``; at ``reloop_service/migrations_pkg`` (a
symlink to ``../migrations`` in the source tree, so a regular ``pip install .`` copies the scripts into the
installed package as package data); and at ``<repo>/migrations`` next to the package (editable installs).
Alembic is configured in code (no ``alembic.ini`` needed), so ``reloop db upgrade`` works from any cwd and
in a Docker image that copies the repo and pip-installs it.

Transactions: ``session_scope`` is the one place that commits, rolls back and maps database errors to
``reloop_service.registry.errors``. A retry never happens inside a session that needs a rollback:
``run_transaction`` takes the *engine* and opens a fresh transaction per attempt.

SQLite: WAL, foreign keys on, a busy timeout, and ``BEGIN IMMEDIATE`` for read-write transactions, so
writers queue on the database lock instead of failing when a read snapshot would have to be upgraded.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import Session

from reloop_service.config import Settings
from reloop_service.registry.errors import (
    ConflictError,
    DatabaseError,
    DeadlineExceededError,
    RegistryError,
    RetryableConflictError,
    SchemaOutOfDateError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 30_000
_READONLY = "reloop_readonly"
# PostgreSQL SQLSTATEs worth a fresh transaction: serialization failure, deadlock, lock not available.
_PG_RETRYABLE = {"40001", "40P01", "55P03"}
# Unique constraints whose violation means "another writer took it first; run again".
_RETRYABLE_CONSTRAINTS = (
    "uq_model_versions_model_name_version",
    "model_versions.model_name, model_versions.version",
)


# --------------------------------------------------------------------------------------------- URLs
def normalize_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL whatever the URL says (``postgresql://``, ``postgres://``)."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql" and parsed.drivername != "postgresql+psycopg":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def safe_url(url: str | Engine) -> str:
    """The URL with its password masked, for messages and logs."""
    parsed = url.url if isinstance(url, Engine) else make_url(normalize_url(url))
    return parsed.render_as_string(hide_password=True)


# ------------------------------------------------------------------------------------------ engines
def make_engine(
    url: str,
    *,
    echo: bool = False,
    connect_timeout_s: float = 5.0,
    statement_timeout_s: float | None = 60.0,
    pool_timeout_s: float = 5.0,
) -> Engine:
    """An engine for the registry: SQLite file (WAL, FKs, busy timeout) or PostgreSQL via psycopg 3.

    PostgreSQL gets bounded waits so a hung server cannot hold a caller forever where a bound is possible:
    ``connect_timeout`` (libpq: the whole connection start-up), ``statement_timeout`` (set on each new
    connection; the server cancels longer statements) and the pool's checkout wait. A server that is
    frozen outright (SIGSTOP, a stuck VM) answers nothing, not even a cancel: callers that must not wait
    on it use a deadline (``session_scope(deadline=...)``) and run it off their request thread.
    """
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            echo=echo,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        )
        on_disk = bool(database) and database != ":memory:"
        path = Path(database).expanduser().resolve() if on_disk and not database.startswith("file:") else None
        _configure_sqlite(engine, wal=on_disk, path=path)
        return engine
    engine = create_engine(
        url,
        echo=echo,
        pool_pre_ping=True,
        pool_timeout=pool_timeout_s,
        connect_args={"connect_timeout": max(1, math.ceil(connect_timeout_s))},
    )
    if statement_timeout_s is not None:
        timeout_ms = max(1, int(statement_timeout_s * 1000))

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            with dbapi_connection.cursor() as cursor:
                cursor.execute(f"SET statement_timeout = {timeout_ms}")
            dbapi_connection.commit()

    return engine


def settings_engine(settings: Settings) -> Engine:
    """``make_engine`` on the settings' database with their ``RELOOP_DB_*_TIMEOUT_S`` bounds."""
    return make_engine(
        settings.resolved_database_url,
        connect_timeout_s=settings.db_connect_timeout_s,
        statement_timeout_s=settings.db_statement_timeout_s,
        pool_timeout_s=settings.db_pool_timeout_s,
    )


def _file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path`` now; ``None`` when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _configure_sqlite(engine: Engine, *, wal: bool, path: Path | None) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite so BEGIN IMMEDIATE and savepoints behave.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if wal:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        readonly = connection.get_execution_options().get(_READONLY, False)
        connection.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

    if path is not None:
        # A pooled connection keeps the file it opened even after another file takes its name: one
        # that opened the empty database SQLite created while the registry file was away (moved,
        # or its volume not yet mounted) failed every transaction with "no such table" until the
        # process restarted. Checkout compares the file the connection opened with the one at the
        # path now and, when they differ, has the pool replace the connection (SQLAlchemy's
        # pessimistic disconnect handling; one os.stat a checkout).
        @event.listens_for(engine, "connect")  # after the PRAGMAs: the file exists by then
        def _remember_file(_dbapi_connection: Any, record: Any) -> None:
            record.info["reloop_sqlite_file"] = _file_identity(path)

        @event.listens_for(engine, "checkout")
        def _same_file(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
            if record.info.get("reloop_sqlite_file") != _file_identity(path):
                raise sa_exc.DisconnectionError(f"{path} is not the file this connection opened")


# ------------------------------------------------------------------------------------- transactions
def _is_retryable(err: sa_exc.DBAPIError) -> bool:
    orig = err.orig
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate in _PG_RETRYABLE:
        return True
    text = str(orig)
    if "database is locked" in text or "database table is locked" in text:
        return True
    if isinstance(err, sa_exc.IntegrityError):
        diag = getattr(orig, "diag", None)
        constraint = getattr(diag, "constraint_name", None) or ""
        return any(name in constraint or name in text for name in _RETRYABLE_CONSTRAINTS)
    return False


def map_db_error(err: sa_exc.SQLAlchemyError) -> RegistryError:
    """Turn a SQLAlchemy/driver error into the registry's own exception."""
    if isinstance(err, sa_exc.DBAPIError):
        message = str(err.orig).strip().splitlines()[0] if err.orig is not None else str(err)
        if _is_retryable(err):
            return RetryableConflictError(f"concurrent update, retry in a new transaction: {message}")
        if isinstance(err, sa_exc.IntegrityError):
            return ConflictError(f"database constraint violated: {message}")
        return DatabaseError(f"database error: {message}")
    return DatabaseError(f"database error: {err}")


def _check_deadline(deadline: float | None, what: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceededError(
            f"the registry database did not answer in time; {what} (nothing was changed)"
        )


@contextmanager
def session_scope(
    engine: Engine, *, readonly: bool = False, deadline: float | None = None
) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any error, database errors as registry errors.

    ``readonly=True`` starts a plain (deferred) transaction on SQLite so readers never queue behind writers.
    ``deadline`` (a ``time.monotonic()`` value): past it, the transaction is not started, or is rolled back
    instead of committed (``DeadlineExceededError``). Every statement has returned before COMMIT is sent,
    so a write whose statements were held up by a hung server is never applied once it answers again.
    """
    _check_deadline(deadline, "the change was not started")
    bind = engine.execution_options(**{_READONLY: True}) if readonly else engine
    session = Session(bind=bind, expire_on_commit=False, autoflush=False)
    try:
        yield session
        _check_deadline(deadline, "the change was rolled back")
        session.commit()
    except sa_exc.SQLAlchemyError as err:
        session.rollback()
        raise map_db_error(err) from err
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def run_transaction(
    engine: Engine,
    fn: Callable[[Session], T],
    *,
    attempts: int = 8,
    backoff_s: float = 0.02,
    deadline: float | None = None,
) -> T:
    """Run ``fn(session)`` in a fresh ``session_scope``, again on a retryable conflict (taken version number,
    deadlock, serialization failure, locked SQLite). Each attempt is a new transaction, so ``fn`` must do all
    its reads inside the session it is given. ``deadline`` bounds all attempts (see ``session_scope``)."""
    for attempt in range(1, attempts + 1):
        try:
            with session_scope(engine, deadline=deadline) as session:
                return fn(session)
        except RegistryError as err:
            if not err.retryable or attempt == attempts:
                raise
            log.debug("retrying transaction (attempt %d/%d): %s", attempt, attempts, err)
            time.sleep(backoff_s * attempt * (0.5 + random.random()))
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------- migrations
def migrations_dir() -> Path:
    """The Alembic script folder (see the module docstring for the lookup order)."""
    candidates: list[Path] = []
    if env := os.environ.get("RELOOP_MIGRATIONS_DIR"):
        candidates.append(Path(env).expanduser())
    package_root = Path(__file__).resolve().parent.parent
    candidates += [package_root / "migrations_pkg", package_root.parent / "migrations"]
    for path in candidates:
        if (path / "env.py").is_file():
            return path
    raise FileNotFoundError(
        "Alembic migrations not found; looked in "
        + ", ".join(str(p) for p in candidates)
        + " (set RELOOP_MIGRATIONS_DIR to the repository's migrations/ folder)"
    )


def alembic_config(url: str | None = None, *, connection: Connection | None = None) -> Config:
    """An Alembic config built in code; the URL travels in ``attributes`` (no ``%`` escaping issues)."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if url is not None:
        config.attributes["url"] = normalize_url(url)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration this code ships."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError("no Alembic revisions found")
    return head


def readonly_engine(engine: Engine) -> Engine:
    """``engine`` whose transactions start as readers (a deferred ``BEGIN`` on SQLite, never queued
    behind a writer), as ``session_scope(readonly=True)`` starts them."""
    return engine.execution_options(**{_READONLY: True})


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (``None`` for an empty database)."""
    try:
        with engine.execution_options(**{_READONLY: True}).connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except sa_exc.SQLAlchemyError as err:
        raise map_db_error(err) from err


def ensure_at_head(engine: Engine) -> str:
    """Refuse a database not at the Alembic head, telling the user how to fix it. Returns the revision."""
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return head
    where = safe_url(engine)
    script = ScriptDirectory.from_config(alembic_config())
    if current is not None and current not in {rev.revision for rev in script.walk_revisions()}:
        raise SchemaOutOfDateError(
            f"registry database {where} is at revision {current}, which this version of reloop-service does "
            f"not know (newer code migrated it?); upgrade reloop-service or run `reloop db downgrade`"
        )
    state = "empty (no schema)" if current is None else f"at revision {current}"
    raise SchemaOutOfDateError(
        f"registry database {where} is {state}, but this code needs revision {head}; run `reloop db upgrade`"
    )


def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision``."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "-1") -> None:
    """Revert migrations down to ``revision`` (``base`` drops every registry table)."""
    command.downgrade(alembic_config(url), revision)
