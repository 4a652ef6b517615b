"""``POST /v1/predict``: score a batch with the production model and archive what was served.

Two ways in, one set of rules:

- ``PredictFastPath``, a pure ASGI middleware, answers well-formed requests itself: content type
  and ``Content-Length`` checked from the headers, the body read in chunks up to the limit,
  orjson-parsed and type-checked in one pass (``schemas._fast_items``), transformed, scored,
  archived and answered with two ASGI messages. It skips FastAPI's routing, dependency solving
  and response classes, whose fixed cost was the largest part of a single-item request.
- Anything else (a non-JSON content type, a body over the limit, a body that fails the fast
  check, no model loaded, a feature that cannot be encoded) is handed to the FastAPI route
  below with the body already read, which applies the same limits and raises the 413, 415, 422
  or 503 through the app's exception handlers, so every error keeps the app's error format.

Per request, the work is proportional to the items: no per-request registry, lock or metric
label look-ups (the predictions counter child is bound once per model version).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reloop_service.data.archive import FeatureColumns, PredictionRows
from reloop_service.data.transforms import FeatureError, RecordColumns, transform_record_columns
from reloop_service.serving.holder import LoadedModel
from reloop_service.serving.ids import uuid7_block
from reloop_service.serving.schemas import (
    PredictLimits,
    PredictResponse,
    _fast_columns,
    orjson_dumps,
    parse_predict_body,
    predict_request_model,
)
from reloop_service.serving.state import ServingState, state_of

PREDICT_PATH = "/v1/predict"
# Batches up to this size are scored on the event loop (a thread hop costs more than their
# forward pass); larger ones go to the threadpool so they never stall small requests for long.
INLINE_MAX_ITEMS = 128
_RECORD_FIELD = re.compile(r"record (\d+): field '([^']+)'")
_JSON_TYPES = (b"application/json", b"application/problem+json")


def _feature_error(exc: FeatureError) -> RequestValidationError:
    """Turn a transform error ("record i: field 'x': ...") into a 422 with the field's path."""
    message = str(exc)
    match = _RECORD_FIELD.search(message)
    loc: tuple[Any, ...] = (
        ("body", "items", int(match.group(1)), "features", match.group(2)) if match else ("body", "items")
    )
    return RequestValidationError([{"type": "feature_type", "loc": loc, "msg": message}])


def _spec_features(features: list[dict[str, Any]], unknown: tuple[str, ...]) -> list[dict[str, Any]]:
    """What the archive keeps of each item with ``RELOOP_ARCHIVE_FEATURES=json``: the spec's features.

    ``unknown`` (from ``transform_records``) lists the keys of this request that are not features;
    the common case has none and the items are archived as sent, with no per-row work.
    """
    if not unknown:
        return features
    drop = frozenset(unknown)
    return [{k: v for k, v in f.items() if k not in drop} if not drop.isdisjoint(f) else f for f in features]


def score(
    state: ServingState,
    loaded: LoadedModel,
    features: list[dict[str, Any]],
    ids: list[str | None],
    columns: RecordColumns | None = None,
) -> bytes:
    """Transform, predict, assign ids, archive; returns the JSON response body.

    ``columns``: the features' ``plain_record_columns`` for ``loaded.spec`` when already read.
    """
    try:
        encoded, unknown, read = transform_record_columns(loaded.spec, features, columns)
    except FeatureError as exc:
        raise _feature_error(exc) from None
    if unknown:
        state.metrics.unknown_features.inc(len(unknown))
    if loaded.fast is not None:
        ctr = loaded.fast.predict_features(encoded)
    else:
        ctr = np.asarray(loaded.predictor.predict_features(encoded), dtype=np.float64)
    id_text = None  # the ids' ASCII when the server made them all (the archive keeps only that)
    if None in ids:
        missing = [i for i, v in enumerate(ids) if v is None]
        fresh, text = uuid7_block(len(missing))
        if len(missing) == len(ids):
            final: list[str] = fresh
            id_text = text
        else:
            final = list(ids)  # type: ignore[arg-type]
            for i, new in zip(missing, fresh, strict=True):
                final[i] = new
    else:
        final = ids  # type: ignore[assignment]
    if state.archive is not None:
        # Hashed: the transform's own arrays (only the spec's features, no per-row work here).
        state.archive.append(
            PredictionRows(
                impression_ids=final,
                ctr=ctr,
                model_version=loaded.version,
                ts_us=time.time_ns() // 1000,
                features=(
                    FeatureColumns(
                        loaded.spec, read.n, read.hashes, read.valid, read.numeric, read.multi_lengths
                    )
                    if state.settings.archive_features == "hashed"
                    else _spec_features(features, unknown)
                ),
                id_text=id_text,
            )
        )
    state.metrics.predictions_of(loaded.version).inc(len(final))
    return orjson_dumps(
        {
            "model_version": loaded.version,
            "predictions": [{"impression_id": i, "ctr": c} for i, c in zip(final, ctr.tolist(), strict=True)],
        }
    )


def _is_json(content_type: bytes | None) -> bool:
    """JSON or no content type at all (curl-style clients); anything else is a 415."""
    if content_type is None:
        return True
    media = content_type.split(b";", 1)[0].strip().lower()
    return media in _JSON_TYPES or (media.startswith(b"application/") and media.endswith(b"+json"))


class BodyTooLarge(Exception):
    """The request body passed the configured limit (answered 413)."""


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, refused with ``BodyTooLarge`` as soon as it passes ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("client disconnected")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields ``body`` once, then defers to the real one (disconnects)."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


# The route reads this scope key: the fast path's verdict on the body ("too_large" or "read").
_SCOPE_KEY = "reloop.predict_body"
_FORWARDED = "reloop.predict_forwarded"  # set when the app (and its metrics middleware) took the request


class PredictFastPath:
    """Pure ASGI answer of well-formed ``POST /v1/predict`` requests (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        state: ServingState,
        limits: PredictLimits,
        route: Any = None,
    ) -> None:
        self.app = app
        self.state = state
        self.limits = limits
        self.route = route if route is not None else RouteLabel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PREDICT_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        scope["route"] = self.route  # the metrics middleware labels by route template
        status = 500  # what the metrics middleware records for a request that raised or sent nothing
        try:
            status = await self._answer(scope, receive, send)
        finally:
            if not scope.get(_FORWARDED):  # the app's metrics middleware counted the forwarded ones
                count, latency = self.state.metrics.request_children(PREDICT_PATH, "POST", status)
                count.inc()
                latency.observe(time.perf_counter() - started)

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> int:
        scope[_FORWARDED] = True
        await self.app(scope, receive, send)
        return 0

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> int:
        """Answer a well-formed request (its status), or hand it to the app (``_forward``)."""
        content_type: bytes | None = None
        length: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                length = value
        if not _is_json(content_type):
            return await self._forward(scope, receive, send)  # the route answers 415
        limit = self.limits.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            scope[_SCOPE_KEY] = "too_large"
            return await self._forward(scope, receive, send)  # 413 without reading the body
        try:
            body = await read_body(receive, limit)
        except BodyTooLarge:
            scope[_SCOPE_KEY] = "too_large"
            return await self._forward(scope, receive, send)
        except ConnectionResetError:
            return 500  # nothing sent: counted as the metrics middleware counts such a request
        scope[_SCOPE_KEY] = "read"
        loaded = self.state.holder.current  # read once: this request finishes on this model
        fast = None if loaded is None else _fast_columns(body, self.limits, loaded.spec)
        if fast is None or loaded is None:
            return await self._forward(scope, _replay(body, receive), send)
        features, ids, columns = fast
        try:
            if len(features) <= INLINE_MAX_ITEMS:
                payload = score(self.state, loaded, features, ids, columns)
            else:
                payload = await run_in_threadpool(score, self.state, loaded, features, ids, columns)
        except RequestValidationError:
            return await self._forward(scope, _replay(body, receive), send)  # the route raises it again: 422
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
        return 200


def _openapi_body(limits: PredictLimits) -> dict[str, Any]:
    model = predict_request_model(limits)
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }


async def _route_body(request: Request, limits: PredictLimits) -> bytes:
    """The body for the route: 413 when over the limit (decided before it is read whole), 415 if not JSON."""
    if not _is_json(request.headers.get("content-type", "").encode() or None):
        raise HTTPException(415, detail="send the predict body as application/json")
    verdict = request.scope.get(_SCOPE_KEY)
    too_large = HTTPException(413, detail=f"request body is larger than {limits.max_body_bytes} bytes")
    if verdict == "too_large":
        raise too_large
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limits.max_body_bytes:
        raise too_large
    try:
        return await read_body(request.receive, limits.max_body_bytes)
    except BodyTooLarge:
        raise too_large from None


def build_router(limits: PredictLimits) -> APIRouter:
    """The predict router for this deployment's limits (they show in the OpenAPI schema)."""
    r = APIRouter(tags=["predict"])

    @r.post(
        PREDICT_PATH,
        response_model=PredictResponse,
        responses={
            413: {"description": "The body is larger than `RELOOP_MAX_BODY_BYTES`."},
            415: {"description": "The body is not `application/json`."},
            422: {"description": "Invalid input; `detail[].loc` is the offending field's path."},
            503: {"description": "No model loaded yet."},
        },
        openapi_extra=_openapi_body(limits),
        summary="Score a batch of items with the production model",
    )
    async def predict(request: Request) -> Response:
        state = state_of(request)
        features, ids = parse_predict_body(await _route_body(request, limits), limits=limits)
        loaded = state.holder.current  # read once: this request finishes on this model
        if loaded is None:
            raise HTTPException(503, detail=state.holder.unavailable_detail())
        if len(features) <= INLINE_MAX_ITEMS:
            body = score(state, loaded, features, ids)
        else:
            body = await run_in_threadpool(score, state, loaded, features, ids)
        return Response(content=body, media_type="application/json")

    return r


@dataclass(frozen=True)
class RouteLabel:
    """What the fast path puts in ``scope["route"]``: the metrics middleware reads ``path``."""

    path: str = PREDICT_PATH
