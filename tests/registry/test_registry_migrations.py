"""Alembic migrations: round trip on both backends, refusal of an outdated schema, lookup from any cwd."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from reloop_service.config import Settings
from reloop_service.registry import db
from reloop_service.registry.errors import SchemaOutOfDateError
from reloop_service.registry.service import open_registry

TABLES = {"model_versions", "production_alias", "registry_events", "cycle_runs"}


def _tables(url: str) -> set[str]:
    engine = db.make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) & TABLES
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(db_url: str) -> None:
    db.upgrade(db_url)
    assert _tables(db_url) == TABLES
    db.downgrade(db_url, "base")
    assert _tables(db_url) == set()
    engine = db.make_engine(db_url)
    try:
        assert db.current_revision(engine) is None
        db.upgrade(db_url)
        assert db.ensure_at_head(engine) == db.head_revision()
    finally:
        engine.dispose()
    assert _tables(db_url) == TABLES


def test_refuses_an_empty_or_unknown_schema(db_url: str) -> None:
    settings = Settings(database_url=db_url)
    with pytest.raises(SchemaOutOfDateError, match="run `reloop db upgrade`"):
        open_registry(settings)
    db.upgrade(db_url)
    engine = open_registry(settings)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = 'ffff_from_the_future'"))
        with pytest.raises(SchemaOutOfDateError, match="does not know"):
            db.ensure_at_head(engine)
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM alembic_version"))
        with pytest.raises(SchemaOutOfDateError, match="reloop db upgrade"):
            db.ensure_at_head(engine)
    finally:
        engine.dispose()


def test_sqlite_pragmas_and_url_normalisation(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path}/nested/dir/r.db")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.SQLITE_BUSY_TIMEOUT_MS
    finally:
        engine.dispose()
    assert db.normalize_url("postgresql://u:p@h:5432/d") == "postgresql+psycopg://u:p@h:5432/d"
    assert db.normalize_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"
    assert db.normalize_url("postgresql+psycopg://u@h/d") == "postgresql+psycopg://u@h/d"
    assert "secret" not in db.safe_url("postgresql://u:secret@h/d")


def test_a_pooled_connection_to_a_replaced_sqlite_file_is_not_reused(tmp_path: Path) -> None:
    """While the registry file was away a connection opened the empty database SQLite made in its
    place and went back to the pool; once the real file is back, transactions read the real file
    (before, every one given that connection failed with "no such table" until a restart)."""
    path = tmp_path / "r.db"
    engine = db.make_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (v TEXT)")
            conn.exec_driver_sql("INSERT INTO t VALUES ('real')")
        engine.dispose()
        away = path.rename(tmp_path / "r.away")
        with engine.connect() as conn:  # an empty database at the path; the connection is pooled
            conn.exec_driver_sql("SELECT 1")
        away.rename(path)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT v FROM t").scalar() == "real"
    finally:
        engine.dispose()


def test_cli_upgrade_works_from_another_cwd(tmp_path: Path) -> None:
    """``reloop db upgrade`` finds the migrations wherever it is run from (no alembic.ini in the cwd)."""
    url = f"sqlite:///{tmp_path}/cwd.db"
    env = {**os.environ, "RELOOP_DATABASE_URL": url}
    env.pop("RELOOP_MIGRATIONS_DIR", None)
    code = (
        "from reloop_service.clitools import app\n"
        "import reloop_service.registry.commands\n"
        "app(['db', 'upgrade', '--json'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert '"revision": "' + db.head_revision() + '"' in done.stdout
    assert db.migrations_dir().joinpath("env.py").is_file()


def test_0003_names_existing_runs_and_versions_by_their_day(db_url: str) -> None:
    """Runs and versions made before cycle periods become daily periods (``period`` = their date)."""
    db.upgrade(db_url, "0002_cycle_skipped")
    engine = db.make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO model_versions (model_name, version, status, created_at, status_changed_at, "
                    "artifact_uri, artifact_sha256, artifact_size, train_config, metrics, cycle_date) VALUES "
                    "('m', 1, 'candidate', :t, :t, 'file:///a', :sha, 1, '{}', '{}', :d)"
                ),
                {"t": "2024-05-01 02:00:00", "sha": "0" * 64, "d": date(2024, 5, 1)},
            )
            conn.execute(
                text(
                    "INSERT INTO cycle_runs (model_name, cycle_date, status, attempt, owner, started_at, "
                    "heartbeat_at, details) VALUES ('m', :d, 'succeeded', 1, 'o', :t, :t, '{}')"
                ),
                {"t": "2024-05-01 02:00:00", "d": date(2024, 5, 1)},
            )
        db.upgrade(db_url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT period FROM cycle_runs")).scalar_one() == "2024-05-01"
            assert conn.execute(text("SELECT period FROM model_versions")).scalar_one() == "2024-05-01"
        # The claim's key is now the period: a second run of the same day's 13:00 hour is its own row.
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO cycle_runs (model_name, cycle_date, period, status, attempt, owner, "
                    "started_at, heartbeat_at, details) "
                    "VALUES ('m', :d, '2024-05-01T13', 'running', 1, 'o', :t, :t, '{}')"
                ),
                {"t": "2024-05-01 14:00:00", "d": date(2024, 5, 1)},
            )
        # ... which the downgrade refuses to fold back into the day (it says what to do).
        with pytest.raises(RuntimeError, match="sub-daily periods: delete them before downgrading"):
            db.downgrade(db_url, "0002_cycle_skipped")
    finally:
        engine.dispose()
