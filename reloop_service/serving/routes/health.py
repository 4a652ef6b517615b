"""``/healthz`` (the process is alive) and ``/readyz`` (a model is loaded; registry state shown).

Both are ``async`` and read only what the model watcher maintains: they never wait on the database, a lock
or the threadpool, so they answer while the database hangs. The unauthenticated ``/readyz`` gives states,
not details: no database host, no error text, no paths (``GET /v1/admin/status`` has those).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from reloop_service.serving.schemas import Health, Readiness
from reloop_service.serving.state import state_of

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "No model loaded (load_error says why)."}},
    summary="Readiness: a model is loaded (an unreachable or stale registry does not make it unready)",
)
async def readyz(request: Request) -> JSONResponse:
    state = state_of(request)
    holder = state.holder
    current = holder.current
    body = Readiness(
        ready=current is not None,
        model_version=current.version if current else None,
        database=holder.registry_state(),
        last_poll_at=holder.last_poll_at,
        load_error=holder.last_load_reason,
        archive_enabled=state.archive is not None,
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if current is not None else 503)
