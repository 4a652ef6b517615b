"""Admin verbs behind ``/v1/admin``: one registry transaction each, then converge this replica.

Promote and rollback swap this replica's model before answering (other replicas converge on
their next poll), so a caller that got 200 knows every later request here is on the new version.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from reloop_service.registry import store
from reloop_service.registry.db import run_transaction, session_scope
from reloop_service.registry.entities import CycleRun, ModelVersion, Production, RegistryEvent
from reloop_service.registry.events import VersionStatus
from reloop_service.serving.holder import ModelHolder


def list_versions(
    *, engine: Engine, model_name: str, status: VersionStatus | None, limit: int
) -> tuple[list[ModelVersion], Production | None]:
    """Versions newest first and the production alias (who set it, when), from one snapshot."""
    with session_scope(engine, readonly=True) as session:
        versions = store.list_versions(session, model_name=model_name, status=status, limit=limit)
        prod = store.get_production(session, model_name=model_name)
    return versions, prod


def show_version(
    *, engine: Engine, model_name: str, version: int
) -> tuple[ModelVersion, list[ModelVersion], bool]:
    """A version, its ancestors (nearest parent first) and whether it is production."""
    with session_scope(engine, readonly=True) as session:
        lineage = store.get_lineage(session, model_name=model_name, version=version)
        prod = store.get_production(session, model_name=model_name)
    is_prod = prod is not None and prod.version.version == version
    return lineage.version, list(lineage.parents), is_prod


def promote_version(
    *,
    engine: Engine,
    holder: ModelHolder,
    model_name: str,
    version: int,
    reason: str,
    actor: str,
    expected_current: int | None,
) -> Production:
    """Promote ``version`` (compare-and-set on ``expected_current`` when given), then swap here."""

    def _tx(session: Session) -> Production:
        expected = expected_current
        if expected is None:  # unconditional: compare with what is production in this transaction
            prod = store.get_production(session, model_name=model_name)
            expected = prod.version.version if prod else None
        return store.promote(
            session,
            model_name=model_name,
            version=version,
            actor=actor,
            reason=reason,
            expected_current=expected,
        )

    production = run_transaction(engine, _tx)
    holder.poll_once()
    return production


def rollback_production(
    *,
    engine: Engine,
    holder: ModelHolder,
    model_name: str,
    reason: str,
    actor: str,
    to: int | None,
    force: bool,
) -> Production:
    """Roll production back (to the previous production version, or ``to``), then swap here."""
    production = run_transaction(
        engine,
        lambda session: store.rollback(
            session, model_name=model_name, actor=actor, reason=reason, to=to, force=force
        ),
    )
    holder.poll_once()
    return production


def list_events(*, engine: Engine, model_name: str, version: int | None, limit: int) -> list[RegistryEvent]:
    with session_scope(engine, readonly=True) as session:
        return store.list_events(session, model_name=model_name, version=version, limit=limit)


def list_cycle_runs(*, engine: Engine, model_name: str, limit: int) -> list[CycleRun]:
    with session_scope(engine, readonly=True) as session:
        return store.list_cycle_runs(session, model_name=model_name, limit=limit)


def to_json(entity: Any) -> dict[str, Any]:
    """Entities to JSON-ready dicts (the shapes documented in docs/api.md)."""
    out: dict[str, Any] = entity.to_dict()
    return out


def trigger_cycle(*, trigger: Any, cycle_date: date, force: bool, actor: str) -> Any:
    """Start a cycle through the hook the cycle domain installs; returns its run id."""
    return trigger(cycle_date, force, actor)
