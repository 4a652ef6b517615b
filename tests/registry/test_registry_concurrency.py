"""Races between real processes: promotions, registrations and cycle claims (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import date, timedelta

from sqlalchemy import Engine, text

from reloop_service.registry import cycle_runs, store
from reloop_service.registry.db import session_scope
from reloop_service.registry.events import EventKind

from . import registry_tools as rt

ROUNDS = 60


def test_concurrent_promotions_one_winner_per_round_and_every_move_audited(
    db_url: str, migrated_engine: Engine
) -> None:
    for _ in range(4):
        rt.register(migrated_engine)
    a, b = rt.run_pair(rt.promote_rounds, (db_url, (1, 2), ROUNDS), (db_url, (3, 4), ROUNDS))
    assert len(a) == len(b) == ROUNDS
    for round_no, (ra, rb) in enumerate(zip(a, b, strict=True)):
        assert sorted([ra.startswith("won"), rb.startswith("won")]) == [False, True], (round_no, ra, rb)
    wins = [int(o.split(":")[1]) for pair in zip(a, b, strict=True) for o in pair if o.startswith("won")]
    with migrated_engine.connect() as conn:
        production = list(
            conn.execute(text("SELECT version FROM model_versions WHERE status = 'production'"))
        )
    assert len(production) == 1
    with session_scope(migrated_engine, readonly=True) as session:
        alias = store.get_production(session, model_name="ctr")
        events = list(
            reversed(store.list_events(session, model_name="ctr", kinds=[EventKind.PROMOTED], limit=1000))
        )
    assert alias is not None and alias.version.version == production[0][0] == wins[-1]
    assert len(events) == ROUNDS
    # The events form one unbroken chain of moves: each starts where the previous one ended.
    previous = None
    for event in events:
        assert event.from_version == previous
        previous = event.to_version
    assert [e.to_version for e in events] == wins


def test_concurrent_unconditional_promotions_never_fail(db_url: str, migrated_engine: Engine) -> None:
    """Without an expectation, racing promotes queue on the locked alias row: none fails, each answers the
    version it asked for, and every move that changed production is one link of the audited chain."""
    for _ in range(3):
        rt.register(migrated_engine)
    a, b = rt.run_pair(rt.promote_unconditionally, (db_url, (1, 2, 3), ROUNDS), (db_url, (2, 3, 1), ROUNDS))
    failures = [o for o in a + b if not o.startswith("ok:")]
    assert failures == []
    assert [int(o[3:]) for o in a] == [(1, 2, 3)[i % 3] for i in range(ROUNDS)]
    assert [int(o[3:]) for o in b] == [(2, 3, 1)[i % 3] for i in range(ROUNDS)]
    with session_scope(migrated_engine, readonly=True) as session:
        alias = store.get_production(session, model_name="ctr")
        events = list(
            reversed(store.list_events(session, model_name="ctr", kinds=[EventKind.PROMOTED], limit=1000))
        )
    previous = None
    for event in events:
        assert event.from_version == previous and event.to_version != previous
        previous = event.to_version
    assert alias is not None and alias.version.version == previous


def test_concurrent_registration_numbers_without_gaps(db_url: str, migrated_engine: Engine) -> None:
    a, b = rt.run_pair(rt.register_many, (db_url, 12), (db_url, 12))
    assert sorted(a + b) == list(range(1, 25))
    assert a == sorted(a) and b == sorted(b)
    with session_scope(migrated_engine, readonly=True) as session:
        registered = store.list_events(session, model_name="ctr", kinds=["registered"], limit=100)
    assert sorted(e.version for e in registered if e.version is not None) == list(range(1, 25))


def test_concurrent_claims_exactly_one_winner_per_date(db_url: str, migrated_engine: Engine) -> None:
    days = [date(2024, 5, 1) + timedelta(days=i) for i in range(8)]
    a, b = rt.run_pair(rt.claim_rounds, (db_url, days), (db_url, days))
    for (day_a, won_a, why_a), (day_b, won_b, why_b) in zip(a, b, strict=True):
        assert day_a == day_b
        assert won_a != won_b, (day_a, why_a, why_b)
        assert {why_a, why_b} == {"claimed", "held"}
    with session_scope(migrated_engine, readonly=True) as session:
        runs = cycle_runs.list_cycle_runs(session, model_name="ctr")
    assert sorted(r.cycle_date for r in runs) == days and all(r.attempt == 1 for r in runs)
