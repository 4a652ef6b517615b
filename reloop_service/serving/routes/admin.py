"""``/v1/admin``: registry operations behind the admin bearer token (see docs/api.md)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError

from reloop_service.alerts import rollback_alert, send_alert
from reloop_service.data.period import Period, PeriodError
from reloop_service.registry.db import safe_url
from reloop_service.registry.events import VersionStatus
from reloop_service.serving import admin_actions as actions
from reloop_service.serving.auth import require_admin
from reloop_service.serving.deadline import AdminWorkers
from reloop_service.serving.problems import problem
from reloop_service.serving.schemas import (
    MAX_VERSION,
    AdminStatus,
    CycleRunList,
    CycleRunOut,
    EventList,
    ProductionOut,
    PromoteRequest,
    ReloadResponse,
    RollbackRequest,
    TriggerCycleRequest,
    TriggerCycleResponse,
    VersionDetail,
    VersionList,
)
from reloop_service.serving.state import ServingState, state_of

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or wrong bearer token."},
    403: {"description": "Admin API disabled (no RELOOP_ADMIN_TOKEN configured)."},
    503: {"description": "Registry database unreachable."},
}
log = logging.getLogger(__name__)
T = TypeVar("T")
router = APIRouter(prefix="/v1/admin", tags=["admin"], responses=_ERRORS)
Actor = Annotated[str, Depends(require_admin)]


def _st(request: Request) -> ServingState:
    state = state_of(request)
    if state.engine is None:
        raise HTTPException(503, detail="registry database not configured")
    return state


async def _off_loop(st: ServingState, what: str, fn: Callable[[float], T]) -> T:
    """Run ``fn(deadline)`` on the admin workers with this deployment's admin deadline (see deadline.py)."""
    workers = st.admin_workers
    if workers is None:  # app used without its lifespan
        workers = st.admin_workers = AdminWorkers()
    return await workers.run(fn, timeout_s=st.settings.admin_timeout_s, what=what)


@router.get("/versions", response_model=VersionList, summary="List versions, newest first")
async def list_versions(
    request: Request,
    _actor: Actor,
    status: Annotated[VersionStatus | None, Query(description="Only versions with this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> dict[str, Any]:
    st = _st(request)
    versions, prod = await _off_loop(
        st,
        "list versions",
        lambda deadline: actions.list_versions(
            engine=st.engine, model_name=st.settings.model_name, status=status, limit=limit, deadline=deadline
        ),
    )
    return {
        "production_version": prod.version.version if prod else None,
        "production": actions.to_json(prod) if prod else None,
        "versions": [actions.to_json(v) for v in versions],
    }


@router.get(
    "/versions/{version}",
    response_model=VersionDetail,
    responses={404: {"description": "No such version."}},
    summary="One version with its lineage",
)
async def show_version(
    request: Request, _actor: Actor, version: Annotated[int, Path(ge=1, le=MAX_VERSION)]
) -> dict[str, Any]:
    st = _st(request)
    found, parents, is_prod = await _off_loop(
        st,
        f"show version {version}",
        lambda deadline: actions.show_version(
            engine=st.engine, model_name=st.settings.model_name, version=version, deadline=deadline
        ),
    )
    return {
        "version": actions.to_json(found),
        "lineage": [actions.to_json(p) for p in parents],
        "is_production": is_prod,
    }


@router.post(
    "/promote",
    response_model=ProductionOut,
    responses={
        404: {"description": "No such version."},
        409: {"description": "Production moved (only with expected_current)."},
        422: {"description": "Transition not allowed, or the version's artifact cannot be served."},
        503: {"description": "Registry database unreachable or too slow; nothing was changed."},
    },
    summary="Promote a version to production (verifies its artifact; swaps this replica before answering)",
)
async def promote(request: Request, actor: Actor, body: PromoteRequest) -> dict[str, Any]:
    st = _st(request)
    production = await _off_loop(
        st,
        f"promote version {body.version}",
        lambda deadline: actions.promote_version(
            engine=st.engine,
            holder=st.holder,
            model_name=st.settings.model_name,
            version=body.version,
            reason=body.reason,
            actor=actor,
            expected_current=body.expected_current,
            deadline=deadline,
        ),
    )
    return actions.to_json(production)


@router.post(
    "/rollback",
    response_model=ProductionOut,
    responses={
        404: {"description": "No such version."},
        409: {"description": "Production moved."},
        422: {"description": "Nothing to roll back to, target needs force, or its artifact is unusable."},
        503: {"description": "Registry database unreachable or too slow; nothing was changed."},
    },
    summary="Roll production back to the previous production version or a named one",
)
async def rollback(request: Request, actor: Actor, body: RollbackRequest) -> dict[str, Any]:
    st = _st(request)
    before = st.holder.current
    production = await _off_loop(
        st,
        "roll back",
        lambda deadline: actions.rollback_production(
            engine=st.engine,
            holder=st.holder,
            model_name=st.settings.model_name,
            reason=body.reason,
            actor=actor,
            to=body.to,
            force=body.force,
            deadline=deadline,
        ),
    )
    # The operator's alert webhook hears of every rollback (sent in the background, with retries).
    send_alert(
        st.settings,
        rollback_alert(production, reason=body.reason, from_version=before.version if before else None),
        background=True,
    )
    return actions.to_json(production)


@router.get("/events", response_model=EventList, summary="Audit history, newest first")
async def events(
    request: Request,
    _actor: Actor,
    version: Annotated[
        int | None, Query(ge=1, le=MAX_VERSION, description="Events naming this version.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    st = _st(request)
    found = await _off_loop(
        st,
        "list events",
        lambda deadline: actions.list_events(
            engine=st.engine,
            model_name=st.settings.model_name,
            version=version,
            limit=limit,
            deadline=deadline,
        ),
    )
    return {"events": [actions.to_json(e) for e in found]}


@router.post("/reload", response_model=ReloadResponse, summary="Reload the production model now")
async def reload(request: Request, _actor: Actor) -> dict[str, Any]:
    st = state_of(request)
    holder = st.holder
    changed = await _off_loop(st, "reload", lambda _deadline: holder.reload_all())
    current = holder.current
    error = holder.last_load_error if not changed else None
    if not holder.db_ok:
        error = f"registry unreachable: {holder.db_error}"
    return {
        "model_version": current.version if current else None,
        "changed": changed,
        "loaded_at": current.loaded_at if current else None,
        "error": error,
    }


@router.post(
    "/cycles",
    status_code=202,
    response_model=TriggerCycleResponse,
    responses={
        409: {"description": "The date is running or already succeeded (without force)."},
        422: {"description": "Invalid body, or a date beyond today + RELOOP_CYCLE_FUTURE_DAYS."},
        501: {"description": "No cycle runner wired into this process."},
    },
    summary="Start a training cycle for a date",
)
async def trigger_cycle(request: Request, response: Response, actor: Actor, body: TriggerCycleRequest) -> Any:
    settings = state_of(request).settings
    try:
        period = Period.parse(body.date, settings.period_step)
    except PeriodError as exc:
        raise RequestValidationError(
            [
                {
                    "type": "period",
                    "loc": ("body", "date"),
                    "msg": f"{exc} (RELOOP_CYCLE_PERIOD={settings.cycle_period})",
                    "input": body.date,
                }
            ]
        ) from None
    horizon = datetime.now(UTC).date() + timedelta(days=settings.cycle_future_days)
    if period.day > horizon:
        raise RequestValidationError(
            [
                {
                    "type": "date_too_far_ahead",
                    "loc": ("body", "date"),
                    "msg": f"cycle date {period} is after {horizon} (today UTC + RELOOP_CYCLE_FUTURE_DAYS)",
                    "input": body.date,
                }
            ]
        )
    trigger = getattr(request.app.state, "cycle_trigger", None)
    if trigger is None:
        return problem(
            501,
            "cycle trigger not available in this process: run `reloop cycle run --date "
            f"{period}` or the scheduler",
            instance=request.url.path,
        )
    log.info("cycle %s triggered by %s (force=%s), reason %r", period, actor, body.force, body.reason)
    run_id = await _off_loop(
        state_of(request),
        f"start cycle {period}",
        lambda _deadline: actions.trigger_cycle(
            # a daily period goes as its date (the trigger's contract before sub-daily periods)
            trigger=trigger,
            cycle_date=period.day if period.is_daily else period,
            force=body.force,
            actor=actor,
        ),
    )
    response.headers["Location"] = f"{router.prefix}/cycles/{run_id}"
    return {"run_id": run_id}


@router.get("/cycles", response_model=CycleRunList, summary="Cycle runs, newest cycle date first")
async def cycle_runs(
    request: Request, _actor: Actor, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict[str, Any]:
    st = _st(request)
    runs = await _off_loop(
        st,
        "list cycle runs",
        lambda deadline: actions.list_cycle_runs(
            engine=st.engine, model_name=st.settings.model_name, limit=limit, deadline=deadline
        ),
    )
    return {"runs": [actions.to_json(r) for r in runs]}


@router.get(
    "/cycles/{run_id}",
    response_model=CycleRunOut,
    responses={404: {"description": "No such run."}},
    summary="One cycle run (the Location of a triggered cycle)",
)
async def cycle_run(
    request: Request, _actor: Actor, run_id: Annotated[int, Path(ge=1, le=MAX_VERSION)]
) -> dict[str, Any]:
    st = _st(request)
    run = await _off_loop(
        st,
        f"read cycle run {run_id}",
        lambda deadline: actions.get_cycle_run(
            engine=st.engine, model_name=st.settings.model_name, run_id=run_id, deadline=deadline
        ),
    )
    return actions.to_json(run)


@router.get("/status", response_model=AdminStatus, summary="Registry and model-load details /readyz hides")
async def status(request: Request, _actor: Actor) -> dict[str, Any]:
    st = state_of(request)
    holder = st.holder
    current = holder.current
    return {
        "database": holder.registry_state(),
        "database_url": safe_url(st.engine) if st.engine is not None else "",
        "database_error": holder.db_error,
        "last_poll_at": holder.last_poll_at,
        "model_version": current.version if current else None,
        "load_error": holder.last_load_error,
        "load_failures": holder.load_failures,
        "swaps": holder.swaps,
        "admin_threads_busy": st.admin_workers.running if st.admin_workers is not None else 0,
    }
