"""Versions, lineage, the production alias, rollback and the audit trail — on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from reloop_service.registry import store
from reloop_service.registry.db import run_transaction, session_scope
from reloop_service.registry.errors import (
    ConflictError,
    InvalidTransitionError,
    NotFoundError,
    PromotionConflictError,
    RegistryError,
    RetryableConflictError,
)
from reloop_service.registry.events import EventKind, VersionStatus

from .registry_tools import fake_ref, production_version, promote, register


def _status(engine: Engine, version: int) -> VersionStatus:
    with session_scope(engine, readonly=True) as session:
        return store.get_version(session, model_name="ctr", version=version).status


def _production_rows(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(
            conn.execute(text("SELECT version FROM model_versions WHERE status = 'production'")).scalars()
        )


def test_register_numbers_lineage_and_metadata(migrated_engine: Engine) -> None:
    v1 = register(migrated_engine, metrics={"auc": 0.71}, cycle_date=date(2024, 1, 1))
    v2 = register(
        migrated_engine,
        parent=1,
        metrics={"auc": 0.72, "logloss": 0.4},
        train_config={"loss": "reloop", "alpha": 0.5},
        gate_verdict={"passed": True, "rules": []},
        feature_spec_hash="f" * 64,
        data_first_day=date(2024, 1, 2),
        data_last_day=date(2024, 1, 2),
        cycle_date=date(2024, 1, 3),
    )
    v3 = register(migrated_engine, parent=2, cycle_date=date(2024, 1, 4))
    assert (v1.version, v2.version, v3.version) == (1, 2, 3)
    assert v2.status == VersionStatus.CANDIDATE and v2.created_at.tzinfo is not None
    with session_scope(migrated_engine, readonly=True) as session:
        got = store.get_version(session, model_name="ctr", version=2)
        lineage = store.get_lineage(session, model_name="ctr", version=3)
        in_range = store.list_versions(
            session, model_name="ctr", cycle_from=date(2024, 1, 2), cycle_to=date(2024, 1, 3)
        )
        candidates = store.list_versions(session, model_name="ctr", status="candidate", limit=2)
        events = store.list_events(session, model_name="ctr", version=2)
    assert got == v2
    assert got.train_config == {"loss": "reloop", "alpha": 0.5} and got.metrics["logloss"] == 0.4
    assert got.gate_verdict == {"passed": True, "rules": []}
    assert [p.version for p in lineage.parents] == [2, 1] and lineage.version.version == 3
    assert [v.version for v in in_range] == [2]
    assert [v.version for v in candidates] == [3, 2]
    assert [e.kind for e in events] == [EventKind.REGISTERED] and events[0].actor == "test"


def test_register_refuses_missing_parent_and_bad_checksum(migrated_engine: Engine) -> None:
    with pytest.raises(NotFoundError, match="no version 7"), session_scope(migrated_engine) as session:
        store.register_version(session, model_name="ctr", artifact=fake_ref("x"), actor="t", parent_version=7)
    bad = fake_ref("x").__class__(uri="/a", sha256="not-a-hash", size=1)
    with pytest.raises(InvalidTransitionError, match="sha256"), session_scope(migrated_engine) as session:
        store.register_version(session, model_name="ctr", artifact=bad, actor="t")
    with session_scope(migrated_engine, readonly=True) as session:
        assert (
            store.list_versions(session, model_name="ctr") == []
            and store.list_events(session, model_name="ctr") == []
        )


def test_promote_is_a_compare_and_set(migrated_engine: Engine) -> None:
    for _ in range(3):
        register(migrated_engine)
    with session_scope(migrated_engine) as session:
        prod = store.promote(
            session, model_name="ctr", version=1, actor="alice", reason="first", expected_current=None
        )
    assert prod.version.version == 1 and prod.updated_by == "alice"
    # A caller that still believes nothing is in production loses, and nothing changes.
    with pytest.raises(PromotionConflictError, match="version 1"), session_scope(migrated_engine) as session:
        store.promote(
            session, model_name="ctr", version=2, actor="bob", reason="stale view", expected_current=None
        )
    assert production_version(migrated_engine) == 1 and _status(migrated_engine, 2) == VersionStatus.CANDIDATE
    with session_scope(migrated_engine) as session:
        store.promote(session, model_name="ctr", version=2, actor="bob", reason="better", expected_current=1)
    assert _status(migrated_engine, 1) == VersionStatus.ARCHIVED
    assert _production_rows(migrated_engine) == [2]
    with session_scope(migrated_engine, readonly=True) as session:
        promoted = store.list_events(session, model_name="ctr", kinds=[EventKind.PROMOTED])
    assert [(e.from_version, e.to_version, e.actor, e.reason) for e in promoted] == [
        (1, 2, "bob", "better"),
        (None, 1, "alice", "first"),
    ]
    with (
        pytest.raises(InvalidTransitionError, match="already in production"),
        session_scope(migrated_engine) as session,
    ):
        store.promote(session, model_name="ctr", version=2, actor="bob", reason="again", expected_current=2)
    with pytest.raises(InvalidTransitionError, match="reason"), session_scope(migrated_engine) as session:
        store.promote(session, model_name="ctr", version=3, actor="bob", reason="  ", expected_current=2)
    with pytest.raises(NotFoundError), session_scope(migrated_engine) as session:
        store.promote(session, model_name="ctr", version=99, actor="bob", reason="x", expected_current=2)
    assert production_version(migrated_engine) == 2


def test_rollback_chain_follows_history_not_version_numbers(migrated_engine: Engine) -> None:
    for _ in range(4):
        register(migrated_engine)
    promote(migrated_engine, 1)
    promote(migrated_engine, 3)  # version 2 never reached production
    promote(migrated_engine, 4)
    with session_scope(migrated_engine) as session:
        back = store.rollback(session, model_name="ctr", actor="ops", reason="v4 is bad")
    assert back.version.version == 3
    with session_scope(migrated_engine) as session:
        back = store.rollback(session, model_name="ctr", actor="ops", reason="v3 too")
    assert back.version.version == 1, "rollback must skip v2 (never production) and v4 (rolled back)"
    with session_scope(migrated_engine, readonly=True) as session:
        v4 = store.get_version(session, model_name="ctr", version=4)
        rolled = store.list_events(session, model_name="ctr", kinds=[EventKind.ROLLED_BACK])
    assert v4.status == VersionStatus.ARCHIVED and v4.rolled_back_at is not None
    assert [(e.from_version, e.to_version) for e in rolled] == [(3, 1), (4, 3)]
    with pytest.raises(InvalidTransitionError, match="no earlier"), session_scope(migrated_engine) as session:
        store.rollback(session, model_name="ctr", actor="ops", reason="nothing left")
    assert _production_rows(migrated_engine) == [1]


def test_rollback_promote_123_back_twice_is_1(migrated_engine: Engine) -> None:
    for v in (1, 2, 3):
        register(migrated_engine)
        promote(migrated_engine, v)
    for expected in (2, 1):
        with session_scope(migrated_engine) as session:
            assert (
                store.rollback(session, model_name="ctr", actor="ops", reason="r").version.version == expected
            )
    assert production_version(migrated_engine) == 1
    assert {_status(migrated_engine, v) for v in (2, 3)} == {VersionStatus.ARCHIVED}


def test_rollback_to_named_version_and_force_rules(migrated_engine: Engine) -> None:
    for _ in range(4):
        register(migrated_engine)
    promote(migrated_engine, 1)
    promote(migrated_engine, 2)
    with session_scope(migrated_engine) as session:
        store.reject_version(session, model_name="ctr", version=3, actor="gate", reason="auc drop")
        store.mark_failed(session, model_name="ctr", version=4, actor="cycle", reason="crashed")
    for target, status in ((3, "rejected"), (4, "failed")):
        with (
            pytest.raises(InvalidTransitionError, match=f"{status}.*--force"),
            session_scope(migrated_engine) as session,
        ):
            store.rollback(session, model_name="ctr", actor="ops", reason="x", to=target)
    assert production_version(migrated_engine) == 2
    with session_scope(migrated_engine) as session:
        prod = store.rollback(
            session, model_name="ctr", actor="ops", reason="operator knows", to=3, force=True
        )
    assert prod.version.version == 3 and _status(migrated_engine, 2) == VersionStatus.ARCHIVED
    # A plain rollback never returns to a version that was rolled back (2 was rolled away from): it goes to 1.
    with session_scope(migrated_engine) as session:
        assert store.rollback(session, model_name="ctr", actor="ops", reason="undo").version.version == 1
    promote(migrated_engine, 2)
    with pytest.raises(PromotionConflictError), session_scope(migrated_engine) as session:
        store.rollback(session, model_name="ctr", actor="ops", reason="cas", expected_current=3)
    with session_scope(migrated_engine) as session:  # re-promoted versions are on the stack again
        assert (
            store.rollback(
                session, model_name="ctr", actor="ops", reason="undo 2", expected_current=2
            ).version.version
            == 1
        )


def test_rollback_without_production_and_rejected_override(migrated_engine: Engine) -> None:
    register(migrated_engine)
    register(migrated_engine)
    with (
        pytest.raises(InvalidTransitionError, match="no production"),
        session_scope(migrated_engine) as session,
    ):
        store.rollback(session, model_name="ctr", actor="ops", reason="x")
    with session_scope(migrated_engine) as session:
        store.reject_version(session, model_name="ctr", version=1, actor="gate", reason="auc floor")
        store.mark_failed(session, model_name="ctr", version=2, actor="cycle", reason="broken")
    # An operator may override the gate's rejection with a promote and a reason; the event records it.
    with session_scope(migrated_engine) as session:
        store.promote(
            session, model_name="ctr", version=1, actor="ops", reason="override gate", expected_current=None
        )
    with pytest.raises(InvalidTransitionError, match="failed"), session_scope(migrated_engine) as session:
        store.promote(session, model_name="ctr", version=2, actor="ops", reason="x", expected_current=1)
    with (
        pytest.raises(InvalidTransitionError, match="in production"),
        session_scope(migrated_engine) as session,
    ):
        store.mark_failed(session, model_name="ctr", version=1, actor="ops", reason="x")
    with session_scope(migrated_engine, readonly=True) as session:
        event = store.list_events(session, model_name="ctr", kinds=["promoted"])[0]
    assert event.details["override_rejection"] is True and event.details["previous_status"] == "rejected"


def test_database_itself_forbids_two_productions_and_edited_history(migrated_engine: Engine) -> None:
    register(migrated_engine)
    register(migrated_engine)
    promote(migrated_engine, 1)
    with pytest.raises(ConflictError), session_scope(migrated_engine) as session:
        session.execute(text("UPDATE model_versions SET status = 'production' WHERE version = 2"))
    with pytest.raises(RegistryError), session_scope(migrated_engine) as session:
        # The alias may not point at a version that is not in production (deferred FK, checked at commit).
        session.execute(text("UPDATE production_alias SET version = 2"))
    with pytest.raises(RegistryError), session_scope(migrated_engine) as session:
        session.execute(text("UPDATE registry_events SET actor = 'mallory'"))
    with pytest.raises(RegistryError), session_scope(migrated_engine) as session:
        session.execute(text("DELETE FROM registry_events"))
    assert _production_rows(migrated_engine) == [1] and production_version(migrated_engine) == 1
    with session_scope(migrated_engine, readonly=True) as session:
        assert {e.actor for e in store.list_events(session, model_name="ctr")} == {"test"}


def test_taken_version_number_is_retryable_and_retried_in_a_fresh_transaction(
    migrated_engine: Engine,
) -> None:
    register(migrated_engine)
    columns = (
        "model_name, version, status, created_at, status_changed_at, artifact_uri, artifact_sha256,"
        " artifact_size, train_config, metrics"
    )
    duplicate = text(
        f"INSERT INTO model_versions ({columns}) SELECT {columns} FROM model_versions WHERE version = 1"
    )
    with pytest.raises(RetryableConflictError), session_scope(migrated_engine) as session:
        session.execute(duplicate)
    other = text("UPDATE model_versions SET version = 0")
    with pytest.raises(ConflictError) as info, session_scope(migrated_engine) as session:
        session.execute(other)
    assert not info.value.retryable
    calls: list[int] = []

    def flaky(session: Session) -> int:
        calls.append(1)
        if len(calls) == 1:
            session.execute(duplicate)  # a racing writer took the number: this transaction is doomed
        return store.register_version(
            session, model_name="ctr", artifact=fake_ref("retry"), actor="t"
        ).version

    assert run_transaction(migrated_engine, flaky) == 2 and len(calls) == 2
