"""Project-wide fixtures: registry databases on SQLite and PostgreSQL.

- ``db_url``: parametrized over ``sqlite`` (a fresh file per test) and ``postgresql`` (a fresh schema per
  test, selected through ``search_path`` in the URL, inside one database created for this pytest session and
  dropped at its end). Tests using it run on both backends; the PostgreSQL case carries the
  ``postgres`` marker.
- ``migrated_engine``: an engine on ``db_url`` upgraded to the Alembic head.

Parallel runs (``scripts/test.sh`` runs pytest-xdist workers): each worker is its own process with its own
session database (the name carries the pid and the worker), ``tmp_path`` folder and ports
(``tests.support.net.free_port`` partitions them by worker). ``pytest_collection_modifyitems`` below starts
the long end-to-end tests first and keeps the tests of a module that shares a module-scoped fixture on one
worker, so that fixture is still built once.

PostgreSQL: ``$RELOOP_TEST_PG_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/``) is the server;
the session database is ``reloop_test_<pid>_<random>`` so concurrent runs never collide. If the server is
unreachable the PostgreSQL cases fail when ``CI=true`` (they must not be skipped in CI) and skip otherwise.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import URL, make_url

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/"
TESTS = Path(__file__).resolve().parent
# Real-process suites that each take tens of seconds: started first, so no worker is left with one of
# them at the end while the others are idle (longest first, as measured; the rest keeps its order).
LONG_FIRST = tuple(
    TESTS / name
    for name in (
        "test_readme.py",
        "faults",
        "scaleout/test_distributed_cycle.py",
        "scaleout/test_distributed_sync.py",
        "scaleout/test_replicas.py",
        "serving/test_workers.py",
        "serving/test_live.py",
    )
)


def _start_rank(item: pytest.Item) -> int:
    """0.. for LONG_FIRST's entries in their order, then the other ``slow`` tests, then the rest."""
    path = Path(str(item.path))
    for rank, long in enumerate(LONG_FIRST):
        if path == long or long in path.parents:
            return rank
    return len(LONG_FIRST) + (item.get_closest_marker("slow") is None)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        if any(d.scope in ("module", "package", "class") for seq in defs.values() for d in seq):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
    items.sort(key=_start_rank)  # a stable sort: the order within each rank is kept


def _admin_conninfo(url: URL, database: str) -> str:
    return url.set(drivername="postgresql", database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A PostgreSQL database created for this test session (SQLAlchemy URL, psycopg 3 driver)."""
    import psycopg

    base = make_url(os.environ.get("RELOOP_TEST_PG_URL") or DEFAULT_PG_URL)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    name = f"reloop_test_{os.getpid()}_{worker}_{uuid.uuid4().hex[:8]}"
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
