"""``/healthz`` (the process is alive) and ``/readyz`` (a model is loaded; database state shown)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from reloop_service.serving.schemas import Health, Readiness
from reloop_service.serving.state import state_of

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "No model loaded yet."}},
    summary="Readiness: a model is loaded (an unreachable database does not make it unready)",
)
def readyz(request: Request) -> JSONResponse:
    state = state_of(request)
    holder = state.holder
    current = holder.current
    body = Readiness(
        ready=current is not None,
        model_version=current.version if current else None,
        database="ok" if holder.db_ok else "unreachable",
        database_error=holder.db_error,
        last_poll_at=holder.last_poll_at,
        archive_enabled=state.archive is not None,
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if current is not None else 503)
