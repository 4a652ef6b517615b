"""``POST /v1/predict``: score a batch with the production model and archive what was served."""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool

from reloop_service.data.archive import PredictionRows
from reloop_service.data.transforms import FeatureError, transform_records
from reloop_service.serving.holder import LoadedModel
from reloop_service.serving.ids import uuid7_batch
from reloop_service.serving.schemas import (
    PredictResponse,
    orjson_dumps,
    parse_predict_body,
    predict_request_model,
)
from reloop_service.serving.state import ServingState, state_of

# Batches up to this size are scored on the event loop (a thread hop costs more than their
# forward pass); larger ones go to the threadpool so they never stall small requests for long.
INLINE_MAX_ITEMS = 128
_RECORD_FIELD = re.compile(r"record (\d+): field '([^']+)'")


def _feature_error(exc: FeatureError) -> RequestValidationError:
    """Turn a transform error ("record i: field 'x': ...") into a 422 with the field's path."""
    message = str(exc)
    match = _RECORD_FIELD.search(message)
    loc: tuple[Any, ...] = (
        ("body", "items", int(match.group(1)), "features", match.group(2))
        if match
        else (
            "body",
            "items",
        )
    )
    return RequestValidationError([{"type": "feature_type", "loc": loc, "msg": message}])


def score(
    state: ServingState, loaded: LoadedModel, features: list[dict[str, Any]], ids: list[str | None]
) -> bytes:
    """Transform, predict, assign ids, archive; returns the JSON response body."""
    try:
        encoded, unknown = transform_records(loaded.spec, features)
    except FeatureError as exc:
        raise _feature_error(exc) from None
    if unknown:
        state.metrics.unknown_features.inc(len(unknown))
    ctr = np.asarray(loaded.predictor.predict_features(encoded), dtype=np.float64)
    if None in ids:
        missing = [i for i, v in enumerate(ids) if v is None]
        fresh = uuid7_batch(len(missing))
        final: list[str] = list(ids)  # type: ignore[arg-type]
        for i, new in zip(missing, fresh, strict=True):
            final[i] = new
    else:
        final = ids  # type: ignore[assignment]
    if state.archive is not None:
        state.archive.append(
            PredictionRows(
                impression_ids=final,
                ctr=ctr,
                model_version=loaded.version,
                ts_us=time.time_ns() // 1000,
                features=features,
            )
        )
    state.metrics.predictions_of(loaded.version).inc(len(final))
    return orjson_dumps(
        {
            "model_version": loaded.version,
            "predictions": [{"impression_id": i, "ctr": c} for i, c in zip(final, ctr.tolist(), strict=True)],
        }
    )


def _openapi_body(max_batch: int) -> dict[str, Any]:
    model = predict_request_model(max_batch)
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }


def build_router(max_batch: int) -> APIRouter:
    """The predict router for this deployment's batch limit (the limit shows in the OpenAPI schema)."""
    r = APIRouter(tags=["predict"])

    @r.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses={
            422: {"description": "Invalid input; `detail[].loc` is the offending field's path."},
            503: {"description": "No model loaded yet."},
        },
        openapi_extra=_openapi_body(max_batch),
        summary="Score a batch of items with the production model",
    )
    async def predict(request: Request) -> Response:
        state = state_of(request)
        features, ids = parse_predict_body(await request.body(), max_batch=max_batch)
        loaded = state.holder.current  # read once: this request finishes on this model
        if loaded is None:
            raise HTTPException(503, detail=state.holder.unavailable_detail())
        if len(features) <= INLINE_MAX_ITEMS:
            body = score(state, loaded, features, ids)
        else:
            body = await run_in_threadpool(score, state, loaded, features, ids)
        return Response(content=body, media_type="application/json")

    return r
