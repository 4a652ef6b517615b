"""The cycle-runs table's verbs: claim a date, keep the claim alive, close it, read runs back.

Like ``store.py``: keyword-only functions taking a ``Session`` (the caller owns the transaction) and
returning frozen entities. ``claim_cycle`` relies on the unique ``(model_name, period)`` constraint
and a compare-and-set on ``attempt`` for take-overs, so exactly one of any number of concurrent
claimers wins; every later write compares the claim's owner and attempt (``ClaimLostError`` otherwise).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from reloop_service.data.period import Period
from reloop_service.registry.entities import CycleClaim, CycleRun
from reloop_service.registry.errors import ClaimLostError, InvalidTransitionError, NotFoundError
from reloop_service.registry.events import CycleStatus
from reloop_service.registry.orm import CycleRunRow
from reloop_service.registry.records import CycleRecord
from reloop_service.registry.store import now_utc


def _run(row: CycleRunRow) -> CycleRun:
    return CycleRun(
        id=row.id,
        model_name=row.model_name,
        cycle_date=row.cycle_date,
        period=row.period,
        status=CycleStatus(row.status),
        attempt=row.attempt,
        owner=row.owner,
        started_at=row.started_at,
        heartbeat_at=row.heartbeat_at,
        finished_at=row.finished_at,
        error=row.error,
        produced_version=row.produced_version,
        details=CycleRecord.model_validate(row.details or {}),
    )


# -------------------------------------------------------------------------------------- cycle runs
def _key(cycle_date: date | Period) -> Period:
    """A daily period for a bare date (every caller before sub-daily periods passed one)."""
    return cycle_date if isinstance(cycle_date, Period) else Period.of_day(cycle_date)


def _run_row(session: Session, model_name: str, period: Period, *, lock: bool) -> CycleRunRow | None:
    stmt = select(CycleRunRow).where(CycleRunRow.model_name == model_name, CycleRunRow.period == period.name)
    if lock:
        stmt = stmt.with_for_update()
    return session.execute(stmt.execution_options(populate_existing=True)).scalar_one_or_none()


def claim_cycle(
    session: Session,
    *,
    cycle_date: date | Period,
    owner: str,
    stale_after_s: float,
    force: bool = False,
    retry_failed: bool = True,
    model_name: str,
    now: datetime | None = None,
) -> CycleClaim:
    """Claim the period ``cycle_date`` (a date: that day) for ``owner``; one concurrent claimer wins.

    - no run yet: insert one (the unique date makes a concurrent insert lose) — ``claimed``;
    - ``running`` with a heartbeat fresher than ``stale_after_s``: not acquired — ``held`` (even with force);
    - ``running`` but stale, ``failed`` (when ``retry_failed``), or ``succeeded`` with ``force``: taken over
      with ``attempt + 1`` by a compare-and-set on the attempt — ``taken_over``;
    - ``succeeded`` without force: a no-op — ``succeeded``; ``failed`` without ``retry_failed``: ``failed``;
    - ``skipped`` (no data or too little of it): taken over — late data may have arrived since.
    Commit promptly: the claim is only visible to others once the transaction commits.
    """
    now = now or now_utc()
    period = _key(cycle_date)
    row = _run_row(session, model_name, period, lock=True)
    if row is None:
        fresh = CycleRunRow(
            model_name=model_name,
            cycle_date=period.day,
            period=period.name,
            status=CycleStatus.RUNNING.value,
            attempt=1,
            owner=owner,
            started_at=now,
            heartbeat_at=now,
            finished_at=None,
            error=None,
            produced_version=None,
            details={},
        )
        try:
            with session.begin_nested():
                session.add(fresh)
        except sa_exc.IntegrityError:
            row = _run_row(session, model_name, period, lock=True)
            if row is None:  # pragma: no cover - the conflicting row vanished (deleted by hand)
                raise
        else:
            return CycleClaim(acquired=True, reason="claimed", run=_run(fresh))
    status = CycleStatus(row.status)
    if status == CycleStatus.RUNNING and now - row.heartbeat_at < timedelta(seconds=stale_after_s):
        return CycleClaim(acquired=False, reason="held", run=_run(row))
    if status == CycleStatus.SUCCEEDED and not force:
        return CycleClaim(acquired=False, reason="succeeded", run=_run(row))
    if status == CycleStatus.FAILED and not (retry_failed or force):
        return CycleClaim(acquired=False, reason="failed", run=_run(row))
    previous = {
        "attempt": row.attempt,
        "status": row.status,
        "owner": row.owner,
        "error": row.error,
        "heartbeat_at": row.heartbeat_at.isoformat(),
    }
    result = session.execute(
        update(CycleRunRow)
        .where(CycleRunRow.id == row.id, CycleRunRow.attempt == row.attempt)
        .values(
            status=CycleStatus.RUNNING.value,
            attempt=row.attempt + 1,
            owner=owner,
            started_at=now,
            heartbeat_at=now,
            finished_at=None,
            error=None,
            produced_version=None,
            details={"previous_attempt": previous, "forced": force},
        )
        .execution_options(synchronize_session=False)
    )
    refreshed = _run_row(session, model_name, period, lock=False)
    assert refreshed is not None
    if getattr(result, "rowcount", 0) != 1:
        return CycleClaim(acquired=False, reason="held", run=_run(refreshed))
    return CycleClaim(acquired=True, reason="taken_over", run=_run(refreshed))


def _update_claimed(session: Session, run: CycleRun, values: dict[str, Any]) -> CycleRun:
    result = session.execute(
        update(CycleRunRow)
        .where(
            CycleRunRow.id == run.id,
            CycleRunRow.attempt == run.attempt,
            CycleRunRow.owner == run.owner,
            CycleRunRow.status == CycleStatus.RUNNING.value,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        raise ClaimLostError(
            f"cycle {run.period} attempt {run.attempt} of {run.owner!r} no longer holds its claim"
            " (taken over after a stale heartbeat, or already finished)"
        )
    return get_cycle_run(session, run_id=run.id, model_name=run.model_name)


def heartbeat_cycle(session: Session, *, run: CycleRun, now: datetime | None = None) -> CycleRun:
    """Refresh the claim's heartbeat; ``ClaimLostError`` if another owner took the date over."""
    return _update_claimed(session, run, {"heartbeat_at": now or now_utc()})


def finish_cycle(
    session: Session,
    *,
    run: CycleRun,
    status: CycleStatus | str,
    error: str | None = None,
    produced_version: int | None = None,
    details: CycleRecord | None = None,
    now: datetime | None = None,
) -> CycleRun:
    """Close the claim as ``succeeded``, ``failed`` or ``skipped``; ``details`` merge into the run's."""
    final = CycleStatus(status)
    if final == CycleStatus.RUNNING:
        raise InvalidTransitionError("finish_cycle needs a final status: succeeded, failed or skipped")
    if final == CycleStatus.FAILED and not error:
        raise InvalidTransitionError("a failed cycle run needs its error text")
    if final == CycleStatus.SKIPPED and not error:
        raise InvalidTransitionError("a skipped cycle run needs its reason")
    current = get_cycle_run(session, run_id=run.id, model_name=run.model_name)
    now = now or now_utc()
    return _update_claimed(
        session,
        run,
        {
            "status": final.value,
            "error": error,
            "produced_version": produced_version,
            "finished_at": now,
            "heartbeat_at": now,
            "details": {**current.details.to_json(), **(details.to_json() if details else {})},
        },
    )


def get_cycle_run(
    session: Session,
    *,
    run_id: int | None = None,
    cycle_date: date | Period | None = None,
    model_name: str,
) -> CycleRun:
    """One run of ``model_name`` by id or by date (``NotFoundError`` if absent)."""
    if run_id is not None:
        stmt = select(CycleRunRow).where(CycleRunRow.id == run_id, CycleRunRow.model_name == model_name)
    elif cycle_date is not None:
        stmt = select(CycleRunRow).where(
            CycleRunRow.model_name == model_name, CycleRunRow.period == _key(cycle_date).name
        )
    else:
        raise ValueError("get_cycle_run needs run_id or cycle_date")
    row = session.execute(stmt.execution_options(populate_existing=True)).scalar_one_or_none()
    if row is None:
        raise NotFoundError(f"no cycle run {run_id if run_id is not None else cycle_date}")
    return _run(row)


def run_by_id(session: Session, *, run_id: int) -> CycleRun:
    """A run by its id, whatever its model (the sweep of work folders, which are named by run id)."""
    row = session.get(CycleRunRow, run_id, populate_existing=True)
    if row is None:
        raise NotFoundError(f"no cycle run {run_id}")
    return _run(row)


def list_cycle_runs(
    session: Session,
    *,
    model_name: str,
    status: CycleStatus | str | None = None,
    date_from: date | None = None,
    date_to: date | None = None,
    limit: int = 100,
) -> list[CycleRun]:
    """Runs newest period first, optionally by status and date range (inclusive, by the start's day)."""
    stmt = select(CycleRunRow).where(CycleRunRow.model_name == model_name)
    if status is not None:
        stmt = stmt.where(CycleRunRow.status == CycleStatus(status).value)
    if date_from is not None:
        stmt = stmt.where(CycleRunRow.cycle_date >= date_from)
    if date_to is not None:
        stmt = stmt.where(CycleRunRow.cycle_date <= date_to)
    stmt = stmt.order_by(CycleRunRow.cycle_date.desc(), CycleRunRow.period.desc()).limit(limit)
    return [_run(row) for row in session.execute(stmt).scalars()]
