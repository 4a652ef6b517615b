"""Admin verbs behind ``/v1/admin``: one registry transaction each, then converge this replica.

Promote and rollback load and check the target's artifact first (a version that cannot be served is
refused with 422 and production does not move), then swap this replica's model before answering (other
replicas converge on their next poll), so a caller that got 200 knows every later request here is on the
new version.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from reloop_service.registry import cycle_runs, store
from reloop_service.registry.db import run_transaction, session_scope
from reloop_service.registry.entities import CycleRun, ModelVersion, Production, RegistryEvent
from reloop_service.registry.errors import ArtifactUnusableError, PromotionConflictError
from reloop_service.registry.events import VersionStatus
from reloop_service.serving.holder import LoadedModel, ModelHolder


def list_versions(
    *,
    engine: Engine,
    model_name: str,
    status: VersionStatus | None,
    limit: int,
    deadline: float | None = None,
) -> tuple[list[ModelVersion], Production | None]:
    """Versions newest first and the production alias (who set it, when), from one snapshot."""
    with session_scope(engine, readonly=True, deadline=deadline) as session:
        versions = store.list_versions(session, model_name=model_name, status=status, limit=limit)
        prod = store.get_production(session, model_name=model_name)
    return versions, prod


def show_version(
    *, engine: Engine, model_name: str, version: int, deadline: float | None = None
) -> tuple[ModelVersion, list[ModelVersion], bool]:
    """A version, its ancestors (nearest parent first) and whether it is production."""
    with session_scope(engine, readonly=True, deadline=deadline) as session:
        lineage = store.get_lineage(session, model_name=model_name, version=version)
        prod = store.get_production(session, model_name=model_name)
    is_prod = prod is not None and prod.version.version == version
    return lineage.version, list(lineage.parents), is_prod


def _prepare(holder: ModelHolder, info: ModelVersion) -> LoadedModel:
    """Load the target's model before production moves; its failure is the promote's 422 with the reason."""
    try:
        return holder.prepare(info)
    except ArtifactUnusableError:
        raise
    except Exception as exc:
        raise ArtifactUnusableError(
            f"version {info.version} cannot be served: {type(exc).__name__}: {exc}",
            version=info.version,
            reason=type(exc).__name__,
        ) from exc


def promote_version(
    *,
    engine: Engine,
    holder: ModelHolder,
    model_name: str,
    version: int,
    reason: str,
    actor: str,
    expected_current: int | None,
    deadline: float | None = None,
) -> Production:
    """Verify ``version``'s artifact by loading it (sha256, decode, warm-up), then promote it (compare-and-set
    on ``expected_current`` when given; otherwise unconditionally, serialized on the locked alias row) and
    serve the loaded model here. A write past ``deadline`` is rolled back, never applied later."""
    from reloop_service.registry.service import promote_version as promote

    done = promote(
        engine,
        model_name=model_name,
        version=version,
        actor=actor,
        reason=reason,
        verify=lambda info: _prepare(holder, info),
        expected_current=expected_current,
        deadline=deadline,
    )
    production, prepared = done.production, done.verified
    if prepared is None:  # already production: nothing moved
        holder.poll_once()
        return production
    if production.version.artifact == prepared.info.artifact:
        holder.adopt(prepared)
    holder.poll_once()  # converge at once if another promote landed after ours
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
    deadline: float | None = None,
) -> Production:
    """Roll production back (to the previous production version, or ``to``) after loading the target's
    artifact, then serve it here. Production moving meanwhile re-plans (a few times) rather than failing."""
    for attempt in range(1, 6):
        with session_scope(engine, readonly=True, deadline=deadline) as session:
            current, target = store.rollback_plan(session, model_name=model_name, to=to)
        prepared = _prepare(holder, target)

        def _tx(session: Session, target: int = target.version, current: int = current) -> Production:
            return store.rollback(
                session,
                model_name=model_name,
                actor=actor,
                reason=reason,
                to=target,
                force=force,
                expected_current=current,
            )

        try:
            production = run_transaction(engine, _tx, deadline=deadline)
        except PromotionConflictError:
            if attempt == 5:
                raise
            continue
        holder.adopt(prepared)
        holder.poll_once()
        return production
    raise AssertionError("unreachable")


def list_events(
    *, engine: Engine, model_name: str, version: int | None, limit: int, deadline: float | None = None
) -> list[RegistryEvent]:
    with session_scope(engine, readonly=True, deadline=deadline) as session:
        return store.list_events(session, model_name=model_name, version=version, limit=limit)


def list_cycle_runs(
    *, engine: Engine, model_name: str, limit: int, deadline: float | None = None
) -> list[CycleRun]:
    with session_scope(engine, readonly=True, deadline=deadline) as session:
        return cycle_runs.list_cycle_runs(session, model_name=model_name, limit=limit)


def get_cycle_run(*, engine: Engine, model_name: str, run_id: int, deadline: float | None = None) -> CycleRun:
    """One run by id (``NotFoundError`` -> 404 when absent or of another model)."""
    with session_scope(engine, readonly=True, deadline=deadline) as session:
        return cycle_runs.get_cycle_run(session, run_id=run_id, model_name=model_name)


def to_json(entity: Any) -> dict[str, Any]:
    """Entities to JSON-ready dicts (the shapes documented in docs/api.md)."""
    out: dict[str, Any] = entity.to_dict()
    return out


def trigger_cycle(*, trigger: Any, cycle_date: Any, force: bool, actor: str) -> Any:
    """Start a cycle through the hook the cycle domain installs; returns its run id."""
    return trigger(cycle_date, force, actor)
