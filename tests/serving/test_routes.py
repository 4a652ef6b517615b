"""Every route through real HTTP (httpx via TestClient against the ASGI app, lifespan running)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from reloop_service.registry.db import upgrade
from reloop_service.serving.app import create_app
from reloop_service.training.checkpoint import checkpoint_to_bytes
from reloop_service.training.predict import Predictor
from tests.support.wait import wait_for

from .conftest import Registry, auth, make_checkpoint, make_settings

UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
ITEMS = [
    {
        "features": {"site": "a.com", "device": "ios", "price": 12.5, "tags": ["x", "y"]},
        "impression_id": "client-1",
    },
    {"features": {"site": 42, "device": None, "price": 3, "tags": []}},
    {"features": {"bogus": "ignored", "other": ["q"]}},  # unknown names only: all missing
]


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()) and (labels or head == name):
            return float(value)
    raise AssertionError(f"{name} {labels} not in metrics")


def test_predict_scores_with_the_training_transforms_and_assigns_ids(served) -> None:
    client, _ = served
    r = client.post("/v1/predict", json={"items": ITEMS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == 1
    preds = body["predictions"]
    assert preds[0]["impression_id"] == "client-1"
    assert UUID7.match(preds[1]["impression_id"]) and UUID7.match(preds[2]["impression_id"])
    assert preds[1]["impression_id"] < preds[2]["impression_id"]  # time-ordered
    expected = Predictor(make_checkpoint(1)).predict_records([it["features"] for it in ITEMS])
    np.testing.assert_allclose([p["ctr"] for p in preds], expected, rtol=1e-6)
    assert all(0.0 < p["ctr"] < 1.0 for p in preds)
    metrics = client.get("/metrics").text
    assert _metric(metrics, "reloop_unknown_features_total") == 2.0
    assert _metric(metrics, "reloop_predictions_total", model_version="1") == 3.0
    assert _metric(metrics, "reloop_http_requests_total", route="/v1/predict", status="200") == 1.0
    assert _metric(metrics, "reloop_model_info", version="1", model_name="ctr") == 1.0
    assert "reloop_http_request_duration_seconds_bucket" in metrics
    for name in (
        "reloop_archive_queue_depth",
        "reloop_archive_rows_written_total",
        "reloop_archive_write_errors_total",
        "reloop_model_swaps_total",
        "reloop_model_load_failures_total",
    ):
        assert name in metrics


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (b'{"items": []}', ["body", "items"]),
        (orjson.dumps({"items": [{"features": {}}] * 51}), ["body", "items"]),
        (b'{"items": [{"features": {"price": NaN}}]}', ["body", "items", 0, "features", "price"]),
        (
            b'{"items": [{"features": {"site": "a"}}, {"features": {"price": Infinity}}]}',
            ["body", "items", 1, "features", "price"],
        ),
        (b'{"items": [{"features": {"price": 1e999}}]}', ["body", "items", 0, "features", "price"]),
        (b'{"items": [{"features": {"site": {"nested": 1}}}]}', ["body", "items", 0, "features", "site"]),
        (b'{"items": [{"features": {"site": ["a", 1]}}]}', ["body", "items", 0, "features", "site"]),
        (b'{"items": [{"features": {}, "extra": 1}]}', ["body", "items", 0, "extra"]),
        (b'{"items": [{"features": {}, "impression_id": ""}]}', ["body", "items", 0, "impression_id"]),
        (b'{"items": [{"features": "nope"}]}', ["body", "items", 0, "features"]),
        (
            b'{"items": [{"features": {"site": "ok"}}, {"features": {"price": "cheap"}}]}',
            ["body", "items", 1, "features", "price"],
        ),
        (b'{"items": [{"features": {"site": ["a", "b"]}}]}', ["body", "items", 0, "features", "site"]),
        (b'{"items": ', ["body"]),
        (b"", ["body"]),
    ],
)
def test_bad_input_is_422_with_the_field_path(served, body: bytes, loc: list) -> None:
    client, _ = served
    r = client.post("/v1/predict", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    problem = r.json()  # RFC 9457 problem details; each invalid field under "errors"
    assert r.headers["content-type"] == "application/problem+json"
    assert problem["status"] == 422 and isinstance(problem["detail"], str)
    locs = [e["loc"] for e in problem["errors"]]
    assert loc in locs, locs


def test_model_health_ready(served) -> None:
    client, _ = served
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True and ready.json()["database"] == "ok"
    model = client.get("/v1/model").json()
    assert model["model_version"] == 1 and model["metrics"]["seed"] == 1
    assert model["feature_names"] == ["site", "device", "price", "tags"]
    assert len(model["artifact_sha256"]) == 64 and model["loaded_at"]


def test_no_production_means_not_ready_and_503(registry: Registry) -> None:
    with TestClient(create_app(registry.settings)) as client:
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200
        r = client.post("/v1/predict", json={"items": ITEMS})
        assert r.status_code == 503 and "no model" in r.json()["detail"]
        assert client.get("/v1/model").status_code == 503


ADMIN_ROUTES = [
    ("GET", "/v1/admin/versions", None),
    ("GET", "/v1/admin/versions/1", None),
    ("POST", "/v1/admin/promote", {"version": 1, "reason": "x"}),
    ("POST", "/v1/admin/rollback", {"reason": "x"}),
    ("GET", "/v1/admin/events", None),
    ("POST", "/v1/admin/reload", None),
    ("POST", "/v1/admin/cycles", {"date": "2024-05-01"}),
    ("GET", "/v1/admin/cycles", None),
]


def test_admin_is_403_without_a_configured_token(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, admin_token=None)
    upgrade(settings.resolved_database_url)
    with TestClient(create_app(settings)) as client:
        for method, path, body in ADMIN_ROUTES:
            r = client.request(method, path, json=body, headers=auth())
            assert r.status_code == 403, (path, r.text)
            assert "RELOOP_ADMIN_TOKEN" in r.json()["detail"]


def test_admin_is_401_without_the_right_token(served) -> None:
    client, _ = served
    for method, path, body in ADMIN_ROUTES:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"}):
            r = client.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, (path, headers, r.text)
            assert "s3cret" not in r.text


def test_admin_versions_promote_rollback_events(served) -> None:
    client, reg = served
    v2 = reg.add_version(2, parent=1)
    v3 = reg.add_version(3, parent=v2)
    listing = client.get("/v1/admin/versions", headers=auth()).json()
    assert listing["production_version"] == 1
    assert [v["version"] for v in listing["versions"]] == [3, 2, 1]
    assert listing["versions"][0]["status"] == "candidate"
    only = client.get(
        "/v1/admin/versions", params={"status": "production", "limit": 5}, headers=auth()
    ).json()
    assert [v["version"] for v in only["versions"]] == [1]
    assert client.get("/v1/admin/versions", params={"status": "bogus"}, headers=auth()).status_code == 422

    detail = client.get(f"/v1/admin/versions/{v3}", headers=auth()).json()
    assert detail["version"]["parent_version"] == 2 and [p["version"] for p in detail["lineage"]] == [2, 1]
    assert detail["is_production"] is False
    v = detail["version"]
    assert (
        v["data_first_day"] == "2024-05-01"
        and v["gate_verdict"]["passed"] is True
        and v["gate_verdict"]["rules"] == []
    )
    assert v["artifact"]["sha256"] and v["created_at"]
    assert client.get("/v1/admin/versions/99", headers=auth()).status_code == 404

    r = client.post("/v1/admin/promote", json={"version": v3, "reason": "better auc"}, headers=auth())
    assert r.status_code == 200, r.text
    assert r.json()["version"]["version"] == 3 and r.json()["updated_by"] == "admin-api"
    # this replica swapped before answering
    assert client.post("/v1/predict", json={"items": ITEMS[:1]}).json()["model_version"] == 3
    assert client.get("/v1/model").json()["model_version"] == 3

    stale = client.post(
        "/v1/admin/promote", json={"version": 2, "reason": "x", "expected_current": 1}, headers=auth()
    )
    assert stale.status_code == 409
    assert (
        client.post("/v1/admin/promote", json={"version": 99, "reason": "x"}, headers=auth()).status_code
        == 404
    )
    already = {"version": 3, "reason": "x", "expected_current": 3}
    assert client.post("/v1/admin/promote", json=already, headers=auth()).status_code == 422
    # without an expectation, promoting what is already production is a no-op that answers it
    promoted_before = len(client.get("/v1/admin/events", headers=auth()).json()["events"])
    again = client.post("/v1/admin/promote", json={"version": 3, "reason": "x"}, headers=auth())
    assert again.status_code == 200 and again.json()["version"]["version"] == 3
    assert len(client.get("/v1/admin/events", headers=auth()).json()["events"]) == promoted_before
    assert (
        client.post("/v1/admin/promote", json={"version": 2, "reason": ""}, headers=auth()).status_code == 422
    )
    assert (
        client.post("/v1/admin/promote", json={"version": 2, "reason": "   "}, headers=auth()).status_code
        == 422
    )

    rb = client.post("/v1/admin/rollback", json={"reason": "regression"}, headers=auth())
    assert rb.status_code == 200, rb.text
    assert rb.json()["version"]["version"] == 1
    assert client.post("/v1/predict", json={"items": ITEMS[:1]}).json()["model_version"] == 1
    none_left = client.post("/v1/admin/rollback", json={"reason": "again"}, headers=auth())
    assert none_left.status_code == 422
    to2 = client.post("/v1/admin/rollback", json={"reason": "pick", "to": 2}, headers=auth())
    assert to2.status_code == 200 and to2.json()["version"]["version"] == 2

    events = client.get("/v1/admin/events", headers=auth()).json()["events"]
    kinds = [e["kind"] for e in events]
    assert kinds[:3] == ["rolled_back", "rolled_back", "promoted"]
    promoted = events[2]
    assert promoted["from_version"] == 1 and promoted["to_version"] == 3
    assert promoted["actor"] == "admin-api" and promoted["reason"] == "better auc" and promoted["created_at"]
    about3 = client.get("/v1/admin/events", params={"version": 3}, headers=auth()).json()["events"]
    assert {e["kind"] for e in about3} == {"registered", "promoted", "rolled_back"}


def test_admin_reload_and_cycles(served) -> None:
    client, _ = served
    r = client.post("/v1/admin/reload", headers=auth())
    assert r.status_code == 200 and r.json()["model_version"] == 1 and r.json()["changed"] is True
    trig = client.post("/v1/admin/cycles", json={"date": "2024-05-03", "force": True}, headers=auth())
    assert trig.status_code == 501 and "reloop cycle run" in trig.json()["detail"]
    assert client.post("/v1/admin/cycles", json={"date": "nope"}, headers=auth()).status_code == 422
    far = client.post("/v1/admin/cycles", json={"date": "9999-12-31"}, headers=auth())
    assert far.status_code == 422 and far.json()["errors"][0]["loc"] == ["body", "date"], far.text
    assert "RELOOP_CYCLE_FUTURE_DAYS" in far.json()["errors"][0]["msg"]
    tomorrow = (datetime.now(UTC).date() + timedelta(days=1)).isoformat()
    assert client.post("/v1/admin/cycles", json={"date": tomorrow}, headers=auth()).status_code == 501
    calls = []
    client.app.state.cycle_trigger = lambda d, force, actor: calls.append((d, force, actor)) or 17
    trig = client.post("/v1/admin/cycles", json={"date": "2024-05-03", "force": True}, headers=auth())
    assert trig.status_code == 202 and trig.json() == {"run_id": 17}
    assert calls == [(date(2024, 5, 3), True, "admin-api")]
    runs = client.get("/v1/admin/cycles", headers=auth())
    assert runs.status_code == 200 and runs.json() == {"runs": []}


def test_failed_load_keeps_the_old_model_and_counts(served) -> None:
    client, reg = served
    good = checkpoint_to_bytes(make_checkpoint(5))
    v2 = reg.add_version(5, artifact=good)
    # tamper with the stored artifact after registration: sha256 no longer matches
    path = next(Path(reg.settings.resolved_artifacts_uri).rglob("model-5.pt"))
    path.write_bytes(good[:-10] + b"0123456789")
    r = client.post("/v1/admin/promote", json={"version": v2, "reason": "try"}, headers=auth())
    assert r.status_code == 422, r.text  # verified before the move: production stays on version 1
    assert "checksum" in r.json()["detail"] and r.json()["error"] == "ArtifactUnusableError"
    assert reg.production() == 1
    assert client.post("/v1/predict", json={"items": ITEMS[:1]}).json()["model_version"] == 1
    # a registry moved behind the API's back (another tool) is refused by the replica, which says why
    reg.promote(v2)
    wait_for(
        lambda: client.get("/readyz").json()["load_error"], timeout=10, what="the refused load on /readyz"
    )
    ready = client.get("/readyz").json()
    assert ready["ready"] is True and ready["model_version"] == 1
    assert ready["load_error"] == f"version {v2}: artifact checksum mismatch"
    assert client.post("/v1/predict", json={"items": ITEMS[:1]}).json()["model_version"] == 1
    failures = _metric(client.get("/metrics").text, "reloop_model_load_failures_total")
    assert failures >= 1.0
    reload = client.post("/v1/admin/reload", headers=auth()).json()
    assert reload["changed"] is False and "sha256" in reload["error"]
    assert _metric(client.get("/metrics").text, "reloop_model_load_failures_total") == failures + 1


def test_database_unreachable_keeps_serving_and_readyz_says_so(served) -> None:
    client, reg = served
    db_file = Path(reg.settings.resolved_database_url.removeprefix("sqlite:///"))
    reg.engine.dispose()
    moved = db_file.with_suffix(".away")
    db_file.rename(moved)
    db_file.mkdir()  # a directory where the database file was: every connection fails
    client.app.state.serving.engine.dispose()  # drop pooled connections to the moved file
    try:
        wait_for(
            lambda: client.get("/readyz").json()["database"] == "unreachable",
            timeout=10,
            what="/readyz to say the database is unreachable",
        )
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["database"] == "unreachable"
        # the public probe names no host, path or error text; the admin status has the details
        assert "database_error" not in ready.json() and str(db_file) not in ready.text
        status = client.get("/v1/admin/status", headers=auth()).json()
        assert status["database"] == "unreachable" and status["database_error"]
        assert str(db_file) in status["database_url"]
        assert client.post("/v1/predict", json={"items": ITEMS}).status_code == 200
        assert client.get("/v1/admin/versions", headers=auth()).status_code == 503
        assert _metric(client.get("/metrics").text, "reloop_registry_db_up") == 0.0
    finally:
        db_file.rmdir()
        moved.rename(db_file)
    wait_for(lambda: client.get("/readyz").json()["database"] == "ok", timeout=10, what="the database back")
    assert client.get("/readyz").json()["database"] == "ok"


def test_a_connection_to_a_replaced_database_file_is_dropped_once_a_poll_fails(served) -> None:
    """A pooled connection can outlive the file it opened: here one opened while the registry file
    was away (SQLite made an empty database there) and the real file was then renamed back over it.
    Every poll through that connection fails ("no such table"); a failed poll must drop the pool so
    the next one reconnects, or the replica reports the database unreachable until it restarts."""
    client, reg = served
    engine = client.app.state.serving.engine
    db_file = Path(reg.settings.resolved_database_url.removeprefix("sqlite:///"))
    reg.engine.dispose()
    engine.dispose()
    moved = db_file.with_suffix(".away")
    db_file.rename(moved)
    try:
        with engine.connect() as conn:  # an empty database where the registry was; back to the pool
            conn.exec_driver_sql("SELECT 1")
    finally:
        moved.rename(db_file)  # the real file back, over the empty one the pooled connection holds
    wait_for(lambda: client.get("/readyz").json()["database"] == "ok", timeout=10, what="the database back")
    assert client.get("/v1/admin/versions", headers=auth()).status_code == 200


def test_cors_stays_closed(served) -> None:
    client, _ = served
    r = client.options(
        "/v1/predict", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in {k.lower() for k in r.headers}
    r = client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in {k.lower() for k in r.headers}


def test_predict_requests_are_counted_once_on_either_path(served) -> None:
    """The fast path counts what it answers; what it hands to the app (errors) the app's metrics
    middleware counts: each request once, by route template and status."""
    client, _ = served
    for _ in range(2):
        assert client.post("/v1/predict", json={"items": ITEMS}).status_code == 200
    assert client.post("/v1/predict", json={"items": []}).status_code == 422
    bad_type = client.post("/v1/predict", content=b"items", headers={"content-type": "text/plain"})
    assert bad_type.status_code == 415
    metrics = client.get("/metrics").text
    counted = [
        float(line.rpartition(" ")[2])
        for line in metrics.splitlines()
        if line.startswith("reloop_http_requests_total{") and 'route="/v1/predict"' in line
    ]
    assert sum(counted) == 4.0  # no request counted twice, under any status
    for status, count in (("200", 2.0), ("422", 1.0), ("415", 1.0)):
        assert _metric(metrics, "reloop_http_requests_total", route="/v1/predict", status=status) == count
        assert (
            _metric(metrics, "reloop_http_request_duration_seconds_count", route="/v1/predict", status=status)
            == count
        )
