"""A corrupt artifact never becomes production, and a replica that cannot load one says why."""

from __future__ import annotations

from pathlib import Path

from . import faultkit as fk


def test_promoting_flipped_bytes_is_refused_and_restart_names_the_load_error(tmp_path: Path) -> None:
    reg = fk.Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "data")
    try:
        v1 = reg.add_version(1)
        v2 = reg.add_version(2)
        garbage = reg.add_version(3, data=b"not a checkpoint at all, but its sha256 is right")
        reg.promote(v1)
        fk.flip_bytes(reg.artifact_path(v2), 3)  # 3 bytes of v2 flipped on disk after registration
        env = fk.reloop_env(tmp_path / "data", reg.url, watch_interval_s=0.1)
        with fk.serving(env, tmp_path) as server:
            r = server.post("/v1/admin/promote", json={"version": v2, "reason": "try"}, headers=fk.AUTH)
            assert r.status_code == 422, r.text
            assert f"version {v2} cannot be served: artifact checksum mismatch" in r.json()["detail"]
            r = server.post("/v1/admin/promote", json={"version": garbage, "reason": "try"}, headers=fk.AUTH)
            assert r.status_code == 422 and "checkpoint unreadable" in r.json()["detail"], r.text
            r = server.post("/v1/admin/rollback", json={"reason": "try", "to": v2}, headers=fk.AUTH)
            assert r.status_code in (409, 422) and "checksum" in r.text, r.text
            assert reg.production() == v1 and reg.promoted_events() == [(None, v1)]
            ready = server.get("/readyz").json()
            assert ready["ready"] is True and ready["model_version"] == v1
            assert server.post("/v1/predict", json={"items": fk.ITEMS[:3]}).json()["model_version"] == v1

        # Production's own artifact rots while no replica runs: a restarted replica has nothing to serve
        # and says why on /readyz and in every 503, without paths.
        fk.flip_bytes(reg.artifact_path(v1), 3)
        with fk.serving(env, tmp_path, ready=False) as server:
            ready = fk.wait_for(
                lambda: (r := server.get("/readyz")).json().get("load_error") and r,
                timeout=30,
                what="/readyz to name the load error",
            )
            assert ready.status_code == 503
            assert ready.json()["load_error"] == f"version {v1}: artifact checksum mismatch"
            assert str(tmp_path) not in ready.text
            predict = server.post("/v1/predict", json={"items": fk.ITEMS[:3]})
            assert predict.status_code == 503
            assert predict.json()["detail"] == f"no model loaded: version {v1}: artifact checksum mismatch"
            status = server.get("/v1/admin/status", headers=fk.AUTH).json()
            assert "sha256" in status["load_error"] and str(reg.artifact_path(v1)) in status["load_error"]
            # the operator repairs production by rolling forward to a good version
            v4 = reg.add_version(4)
            r = server.post("/v1/admin/promote", json={"version": v4, "reason": "repair"}, headers=fk.AUTH)
            assert r.status_code == 200, r.text
            assert server.post("/v1/predict", json={"items": fk.ITEMS[:3]}).json()["model_version"] == v4
            assert server.get("/readyz").json()["load_error"] is None
    finally:
        reg.close()
