"""Bounded waits on the registry database: a write past its deadline is rolled back, never committed, and
PostgreSQL cancels a statement longer than ``statement_timeout``."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import Engine, text

from reloop_service.registry import store
from reloop_service.registry.db import make_engine, session_scope
from reloop_service.registry.errors import DatabaseError, DeadlineExceededError

from . import registry_tools as rt


def test_a_write_that_outlives_its_deadline_is_rolled_back(db_url: str, migrated_engine: Engine) -> None:
    rt.register(migrated_engine)
    deadline = time.monotonic() + 0.2
    with (
        pytest.raises(DeadlineExceededError, match="rolled back"),
        session_scope(migrated_engine, deadline=deadline) as session,
    ):
        store.promote(session, model_name="ctr", version=1, actor="t", reason="late", expected_current=None)
        # The behaviour under test is time passing: the database "answers" only after the deadline.
        while time.monotonic() <= deadline:
            time.sleep(0.01)
    assert rt.production_version(migrated_engine) is None
    with session_scope(migrated_engine, readonly=True) as session:
        assert store.list_events(session, model_name="ctr", kinds=["promoted"]) == []
    with (
        pytest.raises(DeadlineExceededError, match="not started"),
        session_scope(migrated_engine, deadline=time.monotonic() - 1),
    ):
        raise AssertionError("a transaction past its deadline must not start")
    with session_scope(migrated_engine, deadline=time.monotonic() + 30) as session:  # in time: committed
        store.promote(
            session, model_name="ctr", version=1, actor="t", reason="in time", expected_current=None
        )
    assert rt.production_version(migrated_engine) == 1


def test_postgresql_statement_timeout_cancels_long_statements(db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("statement_timeout is a PostgreSQL setting")
    engine = make_engine(db_url, statement_timeout_s=0.2, connect_timeout_s=2)
    try:
        with pytest.raises(DatabaseError, match="statement timeout"), session_scope(engine) as session:
            session.execute(text("SELECT pg_sleep(5)"))  # a statement that outlives the timeout: the subject
        with session_scope(engine) as session:  # the connection is usable afterwards
            assert session.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()
