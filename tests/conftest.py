"""Project-wide fixtures: registry databases on SQLite and PostgreSQL.

- ``db_url``: parametrized over ``sqlite`` (a fresh file per test) and ``postgresql`` (a fresh schema per
  test, selected through ``search_path`` in the URL, inside one database created for this pytest session and
  dropped at its end). Tests using it run on both backends; the PostgreSQL case carries the
  ``postgres`` marker.
- ``migrated_engine``: an engine on ``db_url`` upgraded to the Alembic head.

PostgreSQL: ``$RELOOP_TEST_PG_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/``) is the server;
the session database is ``reloop_test_<pid>_<random>`` so concurrent runs never collide. If the server is
unreachable the PostgreSQL cases fail when ``CI=true`` (they must not be skipped in CI) and skip otherwise.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import URL, make_url

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/"


def _admin_conninfo(url: URL, database: str) -> str:
    return url.set(drivername="postgresql", database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A PostgreSQL database created for this test session (SQLAlchemy URL, psycopg 3 driver)."""
    import psycopg

    base = make_url(os.environ.get("RELOOP_TEST_PG_URL") or DEFAULT_PG_URL)
    name = f"reloop_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin_db = base.database or "postgres"
    try:
        admin = psycopg.connect(_admin_conninfo(base, admin_db), autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as err:
        message = f"PostgreSQL at {base.render_as_string(hide_password=True)} is unreachable: {err}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true: PostgreSQL tests must run)")
        pytest.skip(message)
    try:
        admin.execute(f'CREATE DATABASE "{name}"')
        yield base.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An empty registry database URL: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'registry.db'}"
        return
    import psycopg

    database_url = request.getfixturevalue("pg_database_url")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    conninfo = _admin_conninfo(make_url(database_url), make_url(database_url).database or "")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{database_url}?options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def migrated_engine(db_url: str) -> Iterator[Engine]:
    """An engine on ``db_url`` with the registry schema at the Alembic head."""
    from reloop_service.registry.db import make_engine, upgrade

    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        yield engine
    finally:
        engine.dispose()
