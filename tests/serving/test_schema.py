"""Schemathesis against the app's own OpenAPI schema: no input, valid or not, gets a 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis import DataGenerationMethod
from schemathesis.checks import not_a_server_error

from reloop_service.serving.app import create_app

from .conftest import Registry, auth


@pytest.fixture(scope="module")
def live_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    from reloop_service.registry.artifacts import ArtifactStore
    from reloop_service.registry.db import make_engine, upgrade

    from .conftest import make_settings

    tmp: Path = tmp_path_factory.mktemp("schema")
    s = make_settings(tmp)
    upgrade(s.resolved_database_url)
    engine = make_engine(s.resolved_database_url)
    reg = Registry(s, engine, ArtifactStore(s.resolved_artifacts_uri, {}))
    reg.promote(reg.add_version(1))
    reg.add_version(2, parent=1)
    app = create_app(s)
    app.state.cycle_trigger = lambda day, force, actor: 1  # the 501 branch is covered in test_routes
    with TestClient(app):  # lifespan: watcher and archive running while schemathesis calls the app
        yield app
    engine.dispose()


@pytest.fixture(scope="module")
def api_schema(live_app: FastAPI):  # type: ignore[no-untyped-def]
    return schemathesis.from_dict(
        live_app.openapi(),
        data_generation_methods=[DataGenerationMethod.positive, DataGenerationMethod.negative],
    )


def _legacy_many_shim() -> None:
    """hypothesis-jsonschema 0.23 drives ``many`` with ``.more()``; newer Hypothesis made it a
    context manager. Adapt the one call site (object schemas) so schemathesis can generate bodies."""
    import types

    import hypothesis_jsonschema._from_schema as from_schema
    from hypothesis.internal.conjecture import utils as cu

    if hasattr(cu.many, "more"):
        return

    class LegacyMany:
        def __init__(self, *args: object, **kwargs: object) -> None:
            self._many = cu.many(*args, **kwargs)  # type: ignore[arg-type]
            self._many.__enter__()
            self._it = iter(self._many)

        def more(self) -> bool:
            try:
                next(self._it)
            except StopIteration:
                self._many.__exit__(None)
                return False
            return True

        def reject(self, why: str | None = None) -> None:
            self._many.reject(why)

    from_schema.cu = types.SimpleNamespace(many=LegacyMany)  # type: ignore[attr-defined]


_legacy_many_shim()
schemathesis.experimental.OPEN_API_3_1.enable()  # FastAPI emits OpenAPI 3.1
schema = schemathesis.from_pytest_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_error_for_any_input(case, live_app: FastAPI) -> None:  # type: ignore[no-untyped-def]
    headers = {**(case.headers or {}), **auth()}
    response = case.call_asgi(app=live_app, headers=headers)
    case.validate_response(response, checks=(not_a_server_error,))
    assert response.status_code < 500, response.text
