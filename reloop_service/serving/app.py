"""``create_app(settings)``: the FastAPI service (predict, model, health, metrics, admin).

The lifespan starts the prediction archive and the model watcher and, on shutdown (SIGTERM or
SIGINT under uvicorn, after in-flight requests finished), stops the watcher and flushes the
archive, so every prediction a client received is on disk. CORS stays closed: no CORS
middleware is installed, so browsers refuse cross-origin calls.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reloop_service.config import Settings
from reloop_service.data.archive import PredictionArchive
from reloop_service.registry import store
from reloop_service.registry.artifacts import ArtifactStore
from reloop_service.registry.db import (
    ensure_at_head,
    map_db_error,
    readonly_engine,
    safe_url,
    session_scope,
    settings_engine,
)
from reloop_service.registry.entities import ModelVersion
from reloop_service.registry.errors import RegistryError, SchemaOutOfDateError
from reloop_service.registry.orm import ProductionAliasRow
from reloop_service.registry.verify import load_version
from reloop_service.serving.deadline import ADMIN_THREADS, AdminWorkers
from reloop_service.serving.holder import ModelHolder
from reloop_service.serving.problems import (
    one_line,
    problem,
    problem_type,
    slug_of,
    title_of,
    validation_errors,
)
from reloop_service.serving.prometheus import ServingMetrics
from reloop_service.serving.routes import admin, health, metrics, model, predict
from reloop_service.serving.schemas import PredictLimits, predict_limits, predict_request_model
from reloop_service.serving.state import CycleTrigger, ServingState

log = logging.getLogger(__name__)


def registry_holder(settings: Settings, engine: Any, *, reload_signal: Path | None = None) -> ModelHolder:
    """A model holder fed by the registry's production alias and the artifact store.

    ``reload_signal``: the file through which workers of one server pass forced reloads on.
    """
    artifacts = ArtifactStore(settings.resolved_artifacts_uri, settings.storage_options())
    model_name = settings.model_name
    alias = select(ProductionAliasRow.version, ProductionAliasRow.updated_at).where(
        ProductionAliasRow.model_name == model_name
    )
    seen: dict[str, Any] = {"key": None, "version": None}

    def fetch() -> ModelVersion | None:
        # The watcher polls every second: read only the alias row (one indexed Core query, ~0.1 ms
        # of CPU) and the full version only when the alias moved (the ORM read of both, ~0.7 ms).
        try:
            with readonly_engine(engine).connect() as conn:
                row = conn.execute(alias).first()
        except sa_exc.SQLAlchemyError as err:
            raise map_db_error(err) from err
        if row is None:
            seen["key"] = seen["version"] = None
            return None
        if seen["key"] == (row.version, row.updated_at):
            return seen["version"]  # type: ignore[no-any-return]
        with session_scope(engine, readonly=True) as session:
            prod = store.get_production(session, model_name=model_name)
        if prod is None:
            return None
        seen["key"], seen["version"] = (prod.version.version, prod.updated_at), prod.version
        return prod.version

    def load(info: ModelVersion) -> tuple[Any, Any]:
        predictor = load_version(artifacts, info)  # sha256, decode, rebuild, warm-up: the promote's check
        return predictor, predictor.spec

    return ModelHolder(
        model_name=model_name,
        fetch_production=fetch,
        load_predictor=load,
        watch_interval_s=settings.watch_interval_s,
        stale_after_s=settings.registry_stale_after_s,
        reload_signal=reload_signal,
    )


class _MetricsMiddleware:
    """Counts requests and latency by route template, method and status (pure ASGI: cheap).

    The label is the route's template (``/v1/admin/versions/{version}``), also for routes FastAPI
    adds itself (``/docs``, ``/openapi.json``) that do not record themselves in the scope; only a
    path that no route matches is ``unmatched``, so labels stay bounded.
    """

    def __init__(self, app: ASGIApp, metrics: ServingMetrics, routes: list[Any] | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes if routes is not None else []

    def _template(self, scope: Scope) -> str:
        route = scope.get("route")
        path = getattr(route, "path", None)
        if path:
            return str(path)
        for candidate in self.routes:
            try:
                match, _ = candidate.matches(scope)
            except Exception:  # a route that cannot judge this scope is not it
                continue
            if match == Match.FULL:
                return str(getattr(candidate, "path", "unmatched"))
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def _send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            self.metrics.observe_request(
                route=self._template(scope),
                method=scope["method"],
                status=status,
                seconds=time.perf_counter() - started,
            )


def _install_handlers(app: FastAPI) -> None:
    """Every error answers RFC 9457 problem details (``serving/problems.py``)."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        errors = validation_errors(list(exc.errors()))
        return problem(
            422,
            one_line(errors),
            type_=problem_type("validation"),
            title="Invalid request",
            instance=request.url.path,
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else title_of(exc.status_code)
        return problem(
            exc.status_code, detail, instance=request.url.path, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(RegistryError)
    async def _registry(request: Request, exc: RegistryError) -> Response:
        status = exc.status_code if exc.status_code in (404, 409, 422, 503) else 500
        if status == 500:
            log.error("registry error: %s", exc)
        detail = str(exc) if status != 500 else "registry error (see the server log)"
        name = type(exc).__name__
        return problem(
            status, detail, type_=problem_type(slug_of(name)), instance=request.url.path, error=name
        )

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(
            500,
            "internal error (see the server log)",
            type_=problem_type("internal"),
            instance=request.url.path,
        )


def flush_archive(app: FastAPI) -> int:
    """Write what the app's prediction archive buffers now (as a graceful shutdown does).

    Returns the rows the archive has written in total (0 when the archive is off or not started).
    For in-process harnesses (the demo, the replay) that must see every scored row before a cycle.
    """
    archive = app.state.serving.archive
    if archive is None:
        return 0
    archive.flush()
    return int(archive.counters.written_rows)


def _custom_openapi(app: FastAPI, limits: PredictLimits) -> None:
    """Add the predict body schema (validated by hand for speed) to the generated document."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, routes=app.routes, description=app.description
        )
        body = predict_request_model(limits).model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, definition in body.pop("$defs", {}).items():
            components.setdefault(name, definition)
        components[predict_request_model(limits).__name__] = body
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(
    settings: Settings,
    *,
    holder: ModelHolder | None = None,
    engine: Any = None,
    worker_dir: Path | None = None,
    cycle_trigger: CycleTrigger | None = None,
) -> FastAPI:
    """Build the service. ``holder``/``engine`` default to the registry of ``settings``.

    ``cycle_trigger`` backs ``POST /v1/admin/cycles`` (501 without one): serving never imports the
    cycle; the composition root (``reloop_service.compose``) passes ``cycle.run.make_cycle_trigger``.

    ``worker_dir``: the folder the workers of one ``reloop serve --workers N`` share (forced reloads
    pass through it); metrics switch to multiprocess mode when ``PROMETHEUS_MULTIPROC_DIR`` is set.
    """
    if engine is None:
        engine = settings_engine(settings)
    if holder is None:
        signal = worker_dir / "reload" if worker_dir is not None else None
        holder = registry_holder(settings, engine, reload_signal=signal)
    metrics_ = ServingMetrics()
    state = ServingState(settings=settings, holder=holder, metrics=metrics_, engine=engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            ensure_at_head(engine)
        except SchemaOutOfDateError:
            raise
        except RegistryError as exc:  # unreachable: start anyway, serve once it answers
            log.error("registry %s unreachable at start: %s", safe_url(engine), exc)
        if settings.archive_enabled:
            state.archive = PredictionArchive(
                settings.resolved_archive_uri,
                storage_options=settings.storage_options(),
                replica_id=settings.replica_id,
                flush_rows=settings.archive_flush_rows,
                flush_seconds=settings.archive_flush_seconds,
                buffer_rows=settings.archive_buffer_rows,
                buffer_bytes=settings.archive_buffer_bytes,
                block_ms=settings.archive_block_ms,
            )
        metrics_.bind(holder=holder, archive=state.archive)
        holder.start()
        metrics_.publish()
        state.admin_workers = AdminWorkers(ADMIN_THREADS)
        log.info("serving model %r (archive %s)", settings.model_name, "on" if state.archive else "off")
        try:
            yield
        finally:
            holder.stop()
            if state.archive is not None:
                state.archive.close()
                c = state.archive.counters
                log.info(
                    "archive flushed: %d rows written, %d dropped, %d write errors",
                    c.written_rows,
                    c.dropped_rows,
                    c.write_errors,
                )
            metrics_.close()

    app = FastAPI(
        title="reloop-service",
        version="0.1.0",
        description="CTR predictions from the production model, hot-swapped; admin API under /v1/admin.",
        lifespan=lifespan,
        # The service exports Prometheus metrics (/metrics); FastAPI's native OpenTelemetry stays off.
        # On, it asks the global tracer, meter and logger providers on every request (~3 µs).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.serving = state
    app.state.settings = settings
    app.state.cycle_trigger = cycle_trigger
    limits = predict_limits(settings)
    app.include_router(predict.build_router(limits))
    app.include_router(model.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(admin.router)
    try:  # the dashboard's page at /ui, when that module exists
        ui = importlib.import_module("reloop_service.serving.routes.ui")
    except ModuleNotFoundError as exc:
        if exc.name != "reloop_service.serving.routes.ui":
            raise
    else:
        app.include_router(ui.router)
    _install_handlers(app)
    _custom_openapi(app, limits)
    # The route list is passed by reference: it is the app's own, complete at this point.
    app.add_middleware(_MetricsMiddleware, metrics=metrics_, routes=app.router.routes)
    # Added last, so it runs first: well-formed predictions skip FastAPI's routing and the metrics
    # middleware (the fast path counts what it answers itself, with the same labels); everything
    # else, predict errors included, goes through both.
    app.add_middleware(predict.PredictFastPath, state=state, limits=limits)
    return app
