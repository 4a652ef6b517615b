"""``GET /v1/model``: the version this replica serves, its metrics and when it was loaded."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request

from reloop_service.serving.schemas import ModelInfo
from reloop_service.serving.state import state_of

router = APIRouter(tags=["model"])


@router.get(
    "/v1/model",
    response_model=ModelInfo,
    responses={503: {"description": "No model loaded yet."}},
    summary="The served model version",
)
def get_model(request: Request) -> ModelInfo:
    holder = state_of(request).holder
    current = holder.current
    if current is None:
        raise HTTPException(503, detail=holder.unavailable_detail())
    info = current.info
    return ModelInfo(
        model_name=current.model_name,
        model_version=current.version,
        loaded_at=current.loaded_at,
        artifact_sha256=info.artifact.sha256,
        metrics=info.metrics,
        data_first_day=info.data_first_day,
        data_last_day=info.data_last_day,
        feature_names=list(current.spec.feature_names),
    )
