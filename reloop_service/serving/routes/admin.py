"""``/v1/admin``: registry operations behind the admin bearer token (see docs/api.md)."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from reloop_service.registry.events import VersionStatus
from reloop_service.serving import admin
from reloop_service.serving.auth import require_admin
from reloop_service.serving.schemas import (
    MAX_VERSION,
    CycleRunList,
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
router = APIRouter(prefix="/v1/admin", tags=["admin"], responses=_ERRORS)
Actor = Annotated[str, Depends(require_admin)]


def _st(request: Request) -> ServingState:
    state = state_of(request)
    if state.engine is None:
        raise HTTPException(503, detail="registry database not configured")
    return state


@router.get("/versions", response_model=VersionList, summary="List versions, newest first")
def list_versions(
    request: Request,
    _actor: Actor,
    status: Annotated[VersionStatus | None, Query(description="Only versions with this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> dict[str, Any]:
    st = _st(request)
    versions, prod = admin.list_versions(
        engine=st.engine, model_name=st.settings.model_name, status=status, limit=limit
    )
    return {
        "production_version": prod.version.version if prod else None,
        "production": admin.to_json(prod) if prod else None,
        "versions": [admin.to_json(v) for v in versions],
    }


@router.get(
    "/versions/{version}",
    response_model=VersionDetail,
    responses={404: {"description": "No such version."}},
    summary="One version with its lineage",
)
def show_version(
    request: Request, _actor: Actor, version: Annotated[int, Path(ge=1, le=MAX_VERSION)]
) -> dict[str, Any]:
    st = _st(request)
    found, parents, is_prod = admin.show_version(
        engine=st.engine, model_name=st.settings.model_name, version=version
    )
    return {
        "version": admin.to_json(found),
        "lineage": [admin.to_json(p) for p in parents],
        "is_production": is_prod,
    }


@router.post(
    "/promote",
    response_model=ProductionOut,
    responses={
        404: {"description": "No such version."},
        409: {"description": "Production moved."},
        422: {"description": "Transition not allowed."},
    },
    summary="Promote a version to production (swaps this replica before answering)",
)
def promote(request: Request, actor: Actor, body: PromoteRequest) -> dict[str, Any]:
    st = _st(request)
    production = admin.promote_version(
        engine=st.engine,
        holder=st.holder,
        model_name=st.settings.model_name,
        version=body.version,
        reason=body.reason,
        actor=actor,
        expected_current=body.expected_current,
    )
    return admin.to_json(production)


@router.post(
    "/rollback",
    response_model=ProductionOut,
    responses={
        404: {"description": "No such version."},
        409: {"description": "Production moved."},
        422: {"description": "Nothing to roll back to, or target needs force."},
    },
    summary="Roll production back to the previous production version or a named one",
)
def rollback(request: Request, actor: Actor, body: RollbackRequest) -> dict[str, Any]:
    st = _st(request)
    production = admin.rollback_production(
        engine=st.engine,
        holder=st.holder,
        model_name=st.settings.model_name,
        reason=body.reason,
        actor=actor,
        to=body.to,
        force=body.force,
    )
    return admin.to_json(production)


@router.get("/events", response_model=EventList, summary="Audit history, newest first")
def events(
    request: Request,
    _actor: Actor,
    version: Annotated[
        int | None, Query(ge=1, le=MAX_VERSION, description="Events naming this version.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    st = _st(request)
    found = admin.list_events(
        engine=st.engine, model_name=st.settings.model_name, version=version, limit=limit
    )
    return {"events": [admin.to_json(e) for e in found]}


@router.post("/reload", response_model=ReloadResponse, summary="Reload the production model now")
def reload(request: Request, _actor: Actor) -> dict[str, Any]:
    holder = state_of(request).holder
    changed = holder.poll_once(force=True)
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
    responses={501: {"description": "No cycle runner wired into this process."}},
    summary="Start a training cycle for a date",
)
async def trigger_cycle(request: Request, actor: Actor, body: TriggerCycleRequest) -> Any:
    trigger = getattr(request.app.state, "cycle_trigger", None)
    if trigger is None:
        return JSONResponse(
            {
                "detail": "cycle trigger not available in this process: run `reloop cycle run --date "
                f"{body.date.isoformat()}` or the scheduler"
            },
            status_code=501,
        )
    log.info("cycle %s triggered by %s (force=%s), reason %r", body.date, actor, body.force, body.reason)
    run_id = await run_in_threadpool(
        admin.trigger_cycle, trigger=trigger, cycle_date=body.date, force=body.force, actor=actor
    )
    return {"run_id": run_id}


@router.get("/cycles", response_model=CycleRunList, summary="Cycle runs, newest cycle date first")
def cycle_runs(
    request: Request, _actor: Actor, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict[str, Any]:
    st = _st(request)
    runs = admin.list_cycle_runs(engine=st.engine, model_name=st.settings.model_name, limit=limit)
    return {"runs": [admin.to_json(r) for r in runs]}
