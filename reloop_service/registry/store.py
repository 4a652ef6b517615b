"""The registry's verbs: keyword-only functions taking a ``Session`` and returning frozen entities.

The caller owns the transaction (``db.session_scope`` or ``db.run_transaction``); every function here does all
its reads and writes inside the session it is given, so one call is one consistent step of one transaction.
Audit events are written in the same transaction as the change they describe.

Races are settled by the database, not by luck:
- ``register_version`` takes ``max(version) + 1``; the unique ``(model_name, version)`` constraint turns a
  race into a ``RetryableConflictError``. Retrying needs a *fresh* transaction, so the retry helper
  (``register_version_with_retry``) takes the engine, not a session.
- ``promote``/``rollback`` lock the production alias row (``SELECT ... FOR UPDATE`` on PostgreSQL;
  ``BEGIN IMMEDIATE`` serialises writers on SQLite) and compare it with what the caller saw. The partial
  unique index, the alias primary key and its deferred foreign key make zero-or-two production versions
  impossible even for code that bypasses this module.

The cycle-runs table (claims, heartbeats, outcomes) has its own verbs in ``cycle_runs.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from reloop_service.registry.db import run_transaction
from reloop_service.registry.entities import (
    ArtifactRef,
    Lineage,
    ModelVersion,
    Production,
    RegistryEvent,
)
from reloop_service.registry.errors import (
    InvalidTransitionError,
    NotFoundError,
    PromotionConflictError,
    RetryableConflictError,
)
from reloop_service.registry.events import EventKind, VersionStatus
from reloop_service.registry.orm import ModelVersionRow, ProductionAliasRow, RegistryEventRow

_UNSAFE_TARGETS = (VersionStatus.REJECTED, VersionStatus.FAILED)


def now_utc() -> datetime:
    return datetime.now(UTC)


def _require_reason(reason: str) -> str:
    reason = reason.strip()
    if not reason:
        raise InvalidTransitionError("a reason is required for every change of production or status")
    return reason


# ------------------------------------------------------------------------------------- conversions
def _version(row: ModelVersionRow) -> ModelVersion:
    return ModelVersion(
        model_name=row.model_name,
        version=row.version,
        status=VersionStatus(row.status),
        parent_version=row.parent_version,
        created_at=row.created_at,
        artifact=ArtifactRef(uri=row.artifact_uri, sha256=row.artifact_sha256, size=row.artifact_size),
        feature_spec_hash=row.feature_spec_hash,
        train_config=dict(row.train_config or {}),
        data_first_day=row.data_first_day,
        data_last_day=row.data_last_day,
        metrics=dict(row.metrics or {}),
        gate_verdict=dict(row.gate_verdict) if row.gate_verdict is not None else None,
        cycle_date=row.cycle_date,
        status_changed_at=row.status_changed_at,
        rolled_back_at=row.rolled_back_at,
        period=row.period,
    )


def _event(row: RegistryEventRow) -> RegistryEvent:
    return RegistryEvent(
        id=row.id,
        model_name=row.model_name,
        kind=EventKind(row.kind),
        version=row.version,
        from_version=row.from_version,
        to_version=row.to_version,
        actor=row.actor,
        reason=row.reason,
        created_at=row.created_at,
        details=dict(row.details or {}),
    )


# ----------------------------------------------------------------------------------------- helpers
def _append_event(
    session: Session,
    *,
    model_name: str,
    kind: EventKind,
    version: int | None,
    actor: str,
    reason: str,
    from_version: int | None = None,
    to_version: int | None = None,
    details: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> None:
    session.add(
        RegistryEventRow(
            model_name=model_name,
            kind=kind.value,
            version=version,
            from_version=from_version,
            to_version=to_version,
            actor=actor,
            reason=reason,
            created_at=now or now_utc(),
            details=details or {},
        )
    )


def _version_row(session: Session, model_name: str, version: int, *, lock: bool = False) -> ModelVersionRow:
    stmt = select(ModelVersionRow).where(
        ModelVersionRow.model_name == model_name, ModelVersionRow.version == version
    )
    if lock:
        stmt = stmt.with_for_update()
    row = session.execute(stmt.execution_options(populate_existing=True)).scalar_one_or_none()
    if row is None:
        raise NotFoundError(f"model {model_name!r} has no version {version}")
    return row


def _alias_row(session: Session, model_name: str) -> ProductionAliasRow | None:
    stmt = (
        select(ProductionAliasRow)
        .where(ProductionAliasRow.model_name == model_name)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return session.execute(stmt).scalar_one_or_none()


def _set_status(row: ModelVersionRow, status: VersionStatus, now: datetime) -> None:
    row.status = status.value
    row.status_changed_at = now


# ---------------------------------------------------------------------------------------- versions
def register_version(
    session: Session,
    *,
    model_name: str,
    artifact: ArtifactRef,
    actor: str,
    reason: str = "registered",
    parent_version: int | None = None,
    feature_spec_hash: str | None = None,
    train_config: dict[str, Any] | None = None,
    data_first_day: date | None = None,
    data_last_day: date | None = None,
    metrics: dict[str, Any] | None = None,
    gate_verdict: dict[str, Any] | None = None,
    cycle_date: date | None = None,
    period: str | None = None,
) -> ModelVersion:
    """Register a new ``candidate`` version with the next number for ``model_name``.

    ``artifact`` must come from ``ArtifactStore.put`` (fully written, sha256 known) so no row ever points at a
    half-written file. A racing registration surfaces as ``RetryableConflictError`` when the transaction
    flushes or commits; use ``register_version_with_retry`` (or ``db.run_transaction``) to retry it.
    ``period`` names the cycle's period by its start (default: ``cycle_date``, a daily period).
    """
    if len(artifact.sha256) != 64 or any(c not in "0123456789abcdef" for c in artifact.sha256):
        raise InvalidTransitionError(f"artifact sha256 {artifact.sha256!r} is not a lowercase hex sha256")
    if artifact.size < 0:
        raise InvalidTransitionError(f"artifact size {artifact.size} is negative")
    if data_first_day and data_last_day and data_first_day > data_last_day:
        raise InvalidTransitionError(f"data window {data_first_day}..{data_last_day} is reversed")
    if parent_version is not None:
        _version_row(session, model_name, parent_version)
    latest = session.execute(
        select(func.max(ModelVersionRow.version)).where(ModelVersionRow.model_name == model_name)
    ).scalar_one()
    number = (latest or 0) + 1
    now = now_utc()
    row = ModelVersionRow(
        model_name=model_name,
        version=number,
        parent_version=parent_version,
        status=VersionStatus.CANDIDATE.value,
        created_at=now,
        status_changed_at=now,
        rolled_back_at=None,
        artifact_uri=artifact.uri,
        artifact_sha256=artifact.sha256,
        artifact_size=artifact.size,
        feature_spec_hash=feature_spec_hash,
        train_config=train_config or {},
        data_first_day=data_first_day,
        data_last_day=data_last_day,
        metrics=metrics or {},
        gate_verdict=gate_verdict,
        cycle_date=cycle_date,
        period=period if period is not None else (cycle_date.isoformat() if cycle_date else None),
    )
    session.add(row)
    session.flush()
    _append_event(
        session,
        model_name=model_name,
        kind=EventKind.REGISTERED,
        version=number,
        actor=actor,
        reason=reason,
        details={"parent_version": parent_version, "artifact_uri": artifact.uri, "sha256": artifact.sha256},
        now=now,
    )
    session.flush()
    return _version(row)


def register_version_with_retry(
    engine: Engine, *, model_name: str, attempts: int = 8, **kwargs: Any
) -> ModelVersion:
    """``register_version`` in a transaction of its own, retried in a fresh one
    if another writer took the number."""
    return run_transaction(
        engine,
        lambda session: register_version(session, model_name=model_name, **kwargs),
        attempts=attempts,
    )


def get_version(session: Session, *, model_name: str, version: int) -> ModelVersion:
    """One version (``NotFoundError`` if absent)."""
    return _version(_version_row(session, model_name, version))


def list_versions(
    session: Session,
    *,
    model_name: str,
    status: VersionStatus | str | Iterable[VersionStatus | str] | None = None,
    limit: int = 50,
    cycle_from: date | None = None,
    cycle_to: date | None = None,
) -> list[ModelVersion]:
    """Versions newest first, optionally filtered by status and by the cycle date range (inclusive)."""
    stmt = select(ModelVersionRow).where(ModelVersionRow.model_name == model_name)
    if status is not None:
        statuses = [status] if isinstance(status, str) else list(status)
        stmt = stmt.where(ModelVersionRow.status.in_([VersionStatus(s).value for s in statuses]))
    if cycle_from is not None:
        stmt = stmt.where(ModelVersionRow.cycle_date >= cycle_from)
    if cycle_to is not None:
        stmt = stmt.where(ModelVersionRow.cycle_date <= cycle_to)
    stmt = stmt.order_by(ModelVersionRow.version.desc()).limit(limit)
    return [_version(row) for row in session.execute(stmt).scalars()]


def get_lineage(session: Session, *, model_name: str, version: int) -> Lineage:
    """A version and its chain of parents (nearest first) back to the cold-start version."""
    row = _version_row(session, model_name, version)
    parents: list[ModelVersion] = []
    parent = row.parent_version
    while parent is not None:  # parent_version < version is a CHECK constraint, so this terminates
        parent_row = _version_row(session, model_name, parent)
        parents.append(_version(parent_row))
        parent = parent_row.parent_version
    return Lineage(version=_version(row), parents=tuple(parents))


def get_production(session: Session, *, model_name: str) -> Production | None:
    """The production alias and its version, or ``None`` before the first promotion."""
    alias = session.execute(
        select(ProductionAliasRow).where(ProductionAliasRow.model_name == model_name)
    ).scalar_one_or_none()
    if alias is None:
        return None
    return Production(
        model_name=model_name,
        version=_version(_version_row(session, model_name, alias.version)),
        updated_at=alias.updated_at,
        updated_by=alias.updated_by,
    )


def _move_production(
    session: Session,
    *,
    model_name: str,
    alias: ProductionAliasRow | None,
    old: ModelVersionRow | None,
    new: ModelVersionRow,
    actor: str,
    now: datetime,
    rolled_back: bool,
) -> Production:
    """Archive ``old``, make ``new`` production and point the alias at it, flushing in an order that keeps the
    one-production index satisfied at every statement."""
    try:
        if old is not None:
            _set_status(old, VersionStatus.ARCHIVED, now)
            if rolled_back:
                old.rolled_back_at = now
            session.flush()
        _set_status(new, VersionStatus.PRODUCTION, now)
        new.rolled_back_at = None
        session.flush()
        if alias is None:
            alias = ProductionAliasRow(
                model_name=model_name,
                version=new.version,
                status="production",
                updated_at=now,
                updated_by=actor,
            )
            session.add(alias)
        else:
            alias.version = new.version
            alias.updated_at = now
            alias.updated_by = actor
        session.flush()
    except sa_exc.IntegrityError as err:
        raise PromotionConflictError(
            f"another change of production of model {model_name!r} won the race; re-read production and retry"
        ) from err
    return Production(model_name=model_name, version=_version(new), updated_at=now, updated_by=actor)


def promote(
    session: Session,
    *,
    model_name: str,
    version: int,
    actor: str,
    reason: str,
    expected_current: int | None,
    force: bool = False,
    unconditional: bool = False,
) -> Production:
    """Make ``version`` production if production is still ``expected_current`` (``None``: no production yet).

    Compare-and-set in one transaction: the old production version becomes ``archived`` and a ``promoted``
    event is written. A ``rejected`` version may be promoted (an operator overriding the gate; the event
    records the override); a ``failed`` one needs ``force``. Raises ``PromotionConflictError`` when production
    moved.

    ``unconditional=True`` ignores ``expected_current``: whatever is production once the alias row is locked
    (``SELECT ... FOR UPDATE``; SQLite's ``BEGIN IMMEDIATE`` serialises writers) is replaced, so concurrent
    unconditional promotes queue instead of failing. Promoting the version that is already production is then
    a no-op that returns it; a race on the very first alias insert is a ``RetryableConflictError`` (run it
    again in a fresh transaction, as ``db.run_transaction`` does).
    """
    reason = _require_reason(reason)
    alias = _alias_row(session, model_name)
    current = alias.version if alias is not None else None
    if unconditional:
        if alias is not None and version == current:
            return Production(
                model_name=model_name,
                version=_version(_version_row(session, model_name, version)),
                updated_at=alias.updated_at,
                updated_by=alias.updated_by,
            )
    elif current != expected_current:
        raise PromotionConflictError(
            f"production of model {model_name!r} is {_label(current)}, "
            f"not {_label(expected_current)} as expected;"
            " someone else changed it — re-read and retry"
        )
    if version == current:
        raise InvalidTransitionError(f"version {version} of model {model_name!r} is already in production")
    target = _version_row(session, model_name, version, lock=True)
    previous_status = VersionStatus(target.status)
    if previous_status == VersionStatus.FAILED and not force:
        raise InvalidTransitionError(f"version {version} is failed; promoting it needs force")
    old = _version_row(session, model_name, current, lock=True) if current is not None else None
    now = now_utc()
    try:
        production = _move_production(
            session,
            model_name=model_name,
            alias=alias,
            old=old,
            new=target,
            actor=actor,
            now=now,
            rolled_back=False,
        )
    except PromotionConflictError as err:
        if unconditional:  # only possible when two writers inserted the first alias at once
            raise RetryableConflictError(str(err)) from err
        raise
    _append_event(
        session,
        model_name=model_name,
        kind=EventKind.PROMOTED,
        version=version,
        from_version=current,
        to_version=version,
        actor=actor,
        reason=reason,
        details={
            "previous_status": previous_status.value,
            "override_rejection": previous_status == VersionStatus.REJECTED,
            "forced": force,
        },
        now=now,
    )
    session.flush()
    return production


def _label(version: int | None) -> str:
    return "none" if version is None else f"version {version}"


def production_history(session: Session, *, model_name: str) -> list[int]:
    """The stack of production versions replayed from the events: promotions push, rollbacks pop.

    Its top is the current production; the entry below it is where a plain rollback goes. A version that was
    rolled back is not on the stack, so rolling back twice after promoting 1, 2, 3 lands on 1, not on 3.
    """
    rows = session.execute(
        select(RegistryEventRow)
        .where(
            RegistryEventRow.model_name == model_name,
            RegistryEventRow.kind.in_([EventKind.PROMOTED.value, EventKind.ROLLED_BACK.value]),
        )
        .order_by(RegistryEventRow.id)
    ).scalars()
    stack: list[int] = []
    for row in rows:
        target = row.to_version
        if target is None:
            continue
        if row.kind == EventKind.PROMOTED.value:
            if not stack or stack[-1] != target:
                stack.append(target)
            continue
        if stack and stack[-1] == row.from_version:
            stack.pop()
        if target in stack:
            last = len(stack) - 1 - stack[::-1].index(target)
            del stack[last + 1 :]
        else:
            stack.append(target)
    return stack


def _rollback_to(session: Session, model_name: str, current: int, to: int | None) -> int:
    if to is not None:
        return to
    stack = production_history(session, model_name=model_name)
    if current not in stack:
        raise InvalidTransitionError(
            f"the history does not show how version {current} became production; name a version with --to"
        )
    position = len(stack) - 1 - stack[::-1].index(current)
    if position == 0:
        raise InvalidTransitionError(
            f"no earlier production version of model {model_name!r} to roll back to; name one with --to"
        )
    return stack[position - 1]


def rollback_plan(session: Session, *, model_name: str, to: int | None = None) -> tuple[int, ModelVersion]:
    """What ``rollback`` would do now: ``(current production, target version)``, without changing anything.

    Callers verify the target's artifact with it, then run ``rollback(to=target, expected_current=current)``.
    """
    alias = session.execute(
        select(ProductionAliasRow).where(ProductionAliasRow.model_name == model_name)
    ).scalar_one_or_none()
    if alias is None:
        raise InvalidTransitionError(f"model {model_name!r} has no production version to roll back")
    target = _rollback_to(session, model_name, alias.version, to)
    return alias.version, _version(_version_row(session, model_name, target))


def rollback(
    session: Session,
    *,
    model_name: str,
    actor: str,
    reason: str,
    to: int | None = None,
    force: bool = False,
    expected_current: int | None = None,
) -> Production:
    """Put back the version that was production before the current one (from the event history), or ``to``.

    The rolled-back version becomes ``archived`` with ``rolled_back_at`` set and a ``rolled_back`` event,
    and stays inspectable. A target that is ``rejected`` or ``failed`` needs ``force``. ``expected_current``,
    when given, makes it a compare-and-set like ``promote``.
    """
    reason = _require_reason(reason)
    alias = _alias_row(session, model_name)
    if alias is None:
        raise InvalidTransitionError(f"model {model_name!r} has no production version to roll back")
    current = alias.version
    if expected_current is not None and current != expected_current:
        raise PromotionConflictError(
            f"production of model {model_name!r} is version {current}, "
            f"not version {expected_current} as expected"
        )
    to = _rollback_to(session, model_name, current, to)
    if to == current:
        raise InvalidTransitionError(f"version {to} is already in production")
    target = _version_row(session, model_name, to, lock=True)
    previous_status = VersionStatus(target.status)
    if previous_status in _UNSAFE_TARGETS and not force:
        raise InvalidTransitionError(
            f"version {to} is {previous_status.value}; rolling back to it needs --force"
        )
    old = _version_row(session, model_name, current, lock=True)
    now = now_utc()
    production = _move_production(
        session,
        model_name=model_name,
        alias=alias,
        old=old,
        new=target,
        actor=actor,
        now=now,
        rolled_back=True,
    )
    _append_event(
        session,
        model_name=model_name,
        kind=EventKind.ROLLED_BACK,
        version=current,
        from_version=current,
        to_version=to,
        actor=actor,
        reason=reason,
        details={"target_previous_status": previous_status.value, "forced": force},
        now=now,
    )
    session.flush()
    return production


def _retire(
    session: Session,
    *,
    model_name: str,
    version: int,
    actor: str,
    reason: str,
    status: VersionStatus,
    kind: EventKind,
    allowed_from: tuple[VersionStatus, ...],
    details: dict[str, Any] | None,
) -> ModelVersion:
    reason = _require_reason(reason)
    row = _version_row(session, model_name, version, lock=True)
    previous = VersionStatus(row.status)
    if previous == VersionStatus.PRODUCTION:
        raise InvalidTransitionError(
            f"version {version} is in production; roll back or promote another version first"
        )
    if previous not in allowed_from:
        raise InvalidTransitionError(f"version {version} is {previous.value}; cannot mark it {status.value}")
    now = now_utc()
    _set_status(row, status, now)
    _append_event(
        session,
        model_name=model_name,
        kind=kind,
        version=version,
        actor=actor,
        reason=reason,
        details={"previous_status": previous.value, **(details or {})},
        now=now,
    )
    session.flush()
    return _version(row)


def reject_version(
    session: Session,
    *,
    model_name: str,
    version: int,
    actor: str,
    reason: str,
    details: dict[str, Any] | None = None,
) -> ModelVersion:
    """Mark a candidate (or archived) version ``rejected``, e.g. by the quality gate."""
    return _retire(
        session,
        model_name=model_name,
        version=version,
        actor=actor,
        reason=reason,
        status=VersionStatus.REJECTED,
        kind=EventKind.REJECTED,
        allowed_from=(VersionStatus.CANDIDATE, VersionStatus.ARCHIVED),
        details=details,
    )


def mark_failed(
    session: Session,
    *,
    model_name: str,
    version: int,
    actor: str,
    reason: str,
    details: dict[str, Any] | None = None,
) -> ModelVersion:
    """Mark a non-production version ``failed`` (broken artifact, failed after registration)."""
    return _retire(
        session,
        model_name=model_name,
        version=version,
        actor=actor,
        reason=reason,
        status=VersionStatus.FAILED,
        kind=EventKind.FAILED,
        allowed_from=(VersionStatus.CANDIDATE, VersionStatus.ARCHIVED, VersionStatus.REJECTED),
        details=details,
    )


def list_events(
    session: Session,
    *,
    model_name: str,
    version: int | None = None,
    kinds: Iterable[EventKind | str] | None = None,
    limit: int = 100,
) -> list[RegistryEvent]:
    """Audit events newest first; with ``version``, those naming it as subject, source or target."""
    stmt = select(RegistryEventRow).where(RegistryEventRow.model_name == model_name)
    if version is not None:
        stmt = stmt.where(
            (RegistryEventRow.version == version)
            | (RegistryEventRow.from_version == version)
            | (RegistryEventRow.to_version == version)
        )
    if kinds is not None:
        stmt = stmt.where(RegistryEventRow.kind.in_([EventKind(k).value for k in kinds]))
    stmt = stmt.order_by(RegistryEventRow.id.desc()).limit(limit)
    return [_event(row) for row in session.execute(stmt).scalars()]
