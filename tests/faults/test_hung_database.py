"""A frozen PostgreSQL (SIGSTOP on every server process): health answers, readiness says stale, predictions
keep flowing, and an admin write the database never answered is not applied once it wakes up."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from . import faultkit as fk


@pytest.fixture
def cluster() -> fk.PgCluster:
    try:
        pg = fk.PgCluster()
    except RuntimeError as exc:
        pytest.skip(f"cannot start a throwaway PostgreSQL: {exc}")
    yield pg
    pg.stop()


def test_frozen_database(cluster: fk.PgCluster, tmp_path: Path) -> None:
    reg = fk.Registry(cluster.url, tmp_path / "data")
    try:
        v1, v2 = reg.add_version(1), reg.add_version(2)
        reg.promote(v1)
        reg.close()  # the test's own pooled connections must not be what hangs below
        env = fk.reloop_env(
            tmp_path / "data",
            cluster.url,
            watch_interval_s=0.2,
            registry_stale_after_s=1.0,
            admin_timeout_s=2.0,
            db_connect_timeout_s=1.0,
            db_pool_timeout_s=1.0,
            max_batch=500,
        )
        with fk.serving(env, tmp_path) as server:
            assert server.get("/readyz").json()["database"] == "ok"
            cluster.freeze()
            try:
                # every probe answers within its client timeout while the database hangs
                stale = fk.wait_for(
                    lambda: server.get("/readyz", timeout=3).json()["database"] == "stale",
                    timeout=15,
                    what="/readyz to say stale",
                )
                assert stale
                ready = server.get("/readyz", timeout=3)
                assert ready.status_code == 200 and ready.json()["model_version"] == v1
                assert f"{cluster.port}" not in ready.text and "127.0.0.1" not in ready.text
                assert server.get("/healthz", timeout=3).status_code == 200
                big = server.post("/v1/predict", json={"items": fk.ITEMS}, timeout=10)  # 200 items
                assert big.status_code == 200 and big.json()["model_version"] == v1
                body = {"version": v2, "reason": "during the freeze"}
                with pytest.raises(httpx.TimeoutException):  # a client that gives up after 0.5 s
                    server.post("/v1/admin/promote", json=body, headers=fk.AUTH, timeout=0.5)
                late = server.post("/v1/admin/promote", json=body, headers=fk.AUTH, timeout=15)
                # 503 either way: the connection could not even be opened, or the deadline passed
                assert late.status_code == 503, late.text
                assert late.json()["error"] in ("DeadlineExceededError", "DatabaseError"), late.text
                assert server.get("/healthz", timeout=3).status_code == 200
            finally:
                cluster.thaw()
            fk.wait_for(
                lambda: server.get("/readyz").json()["database"] == "ok", timeout=30, what="/readyz ok again"
            )
            fk.wait_for(
                lambda: server.get("/v1/admin/status", headers=fk.AUTH).json()["admin_threads_busy"] == 0,
                timeout=30,
                what="the abandoned admin calls to end",
            )
            # neither promote was applied after the database answered again
            reg = fk.Registry(cluster.url, tmp_path / "data")
            assert reg.production() == v1 and reg.promoted_events() == [(None, v1)]
            assert server.post("/v1/predict", json={"items": fk.ITEMS[:2]}).json()["model_version"] == v1
            # and the service recovers: the same promote now goes through
            ok = server.post("/v1/admin/promote", json=body, headers=fk.AUTH, timeout=15)
            assert ok.status_code == 200, ok.text
            assert reg.production() == v2
    finally:
        reg.close()
