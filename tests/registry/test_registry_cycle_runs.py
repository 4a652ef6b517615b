"""Cycle-run claims: one owner per date, heartbeats, stale take-over, succeeded dates as no-ops."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import Engine

from reloop_service.registry import cycle_runs
from reloop_service.registry.db import session_scope
from reloop_service.registry.entities import CycleClaim
from reloop_service.registry.errors import ClaimLostError, InvalidTransitionError
from reloop_service.registry.events import CycleStatus
from reloop_service.registry.records import CycleRecord

DAY = date(2024, 3, 1)
T0 = datetime(2024, 3, 2, 2, 0, tzinfo=UTC)


def _claim(engine: Engine, owner: str, *, now: datetime, force: bool = False, **kw: object) -> CycleClaim:
    with session_scope(engine) as session:
        return cycle_runs.claim_cycle(
            session,
            model_name="ctr",
            cycle_date=DAY,
            owner=owner,
            stale_after_s=120,
            force=force,
            now=now,
            **kw,
        )


def test_first_claim_wins_and_fresh_claim_is_held(migrated_engine: Engine) -> None:
    first = _claim(migrated_engine, "a", now=T0)
    assert first.acquired and first.reason == "claimed" and first.run.attempt == 1
    assert first.run.status == CycleStatus.RUNNING and first.run.owner == "a"
    held = _claim(migrated_engine, "b", now=T0 + timedelta(seconds=60), force=True)
    assert not held.acquired and held.reason == "held" and held.run.owner == "a"


def test_stale_claim_is_taken_over_and_old_owner_loses_it(migrated_engine: Engine) -> None:
    first = _claim(migrated_engine, "a", now=T0)
    with session_scope(migrated_engine) as session:
        beat = cycle_runs.heartbeat_cycle(session, run=first.run, now=T0 + timedelta(seconds=100))
    assert beat.heartbeat_at == T0 + timedelta(seconds=100)
    assert not _claim(migrated_engine, "b", now=T0 + timedelta(seconds=200)).acquired  # 100 s since the beat
    taken = _claim(migrated_engine, "b", now=T0 + timedelta(seconds=221))
    assert taken.acquired and taken.reason == "taken_over"
    assert taken.run.attempt == 2 and taken.run.owner == "b" and taken.run.id == first.run.id
    assert taken.run.details.model_extra["previous_attempt"]["owner"] == "a"
    for call in (cycle_runs.heartbeat_cycle, cycle_runs.finish_cycle):
        with (
            pytest.raises(ClaimLostError, match="no longer holds"),
            session_scope(migrated_engine) as session,
        ):
            if call is cycle_runs.finish_cycle:
                cycle_runs.finish_cycle(session, run=first.run, status="succeeded")
            else:
                cycle_runs.heartbeat_cycle(session, run=first.run)
    with session_scope(migrated_engine, readonly=True) as session:
        assert cycle_runs.get_cycle_run(session, model_name="ctr", cycle_date=DAY).owner == "b"


def test_succeeded_date_is_a_no_op_unless_forced(migrated_engine: Engine) -> None:
    claim = _claim(migrated_engine, "a", now=T0)
    with session_scope(migrated_engine) as session:
        done = cycle_runs.finish_cycle(
            session, run=claim.run, status="succeeded", produced_version=None, details=CycleRecord(version=10)
        )
    assert done.status == CycleStatus.SUCCEEDED and done.finished_at is not None
    assert done.details.version == 10 and done.details.model_extra == {}
    later = T0 + timedelta(days=3)
    noop = _claim(migrated_engine, "b", now=later)
    assert not noop.acquired and noop.reason == "succeeded" and noop.run.status == CycleStatus.SUCCEEDED
    forced = _claim(migrated_engine, "b", now=later, force=True)
    assert forced.acquired and forced.reason == "taken_over" and forced.run.attempt == 2
    assert forced.run.details.model_extra["forced"] is True and forced.run.finished_at is None


def test_failed_run_records_error_and_can_be_retried(migrated_engine: Engine) -> None:
    claim = _claim(migrated_engine, "a", now=T0)
    with pytest.raises(InvalidTransitionError, match="error"), session_scope(migrated_engine) as session:
        cycle_runs.finish_cycle(session, run=claim.run, status="failed")
    with session_scope(migrated_engine) as session:
        failed = cycle_runs.finish_cycle(session, run=claim.run, status="failed", error="ingest: no files")
    assert failed.error == "ingest: no files"
    kept = _claim(migrated_engine, "b", now=T0, retry_failed=False)
    assert not kept.acquired and kept.reason == "failed"
    retry = _claim(migrated_engine, "b", now=T0)
    assert retry.acquired and retry.run.attempt == 2 and retry.run.error is None
    assert retry.run.details.model_extra["previous_attempt"]["error"] == "ingest: no files"
    with session_scope(migrated_engine, readonly=True) as session:
        runs = cycle_runs.list_cycle_runs(session, model_name="ctr", status="running")
        assert [r.cycle_date for r in runs] == [DAY]
        assert cycle_runs.list_cycle_runs(session, model_name="ctr", date_from=DAY + timedelta(days=1)) == []
