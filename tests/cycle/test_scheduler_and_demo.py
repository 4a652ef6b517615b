"""Scheduler catch-up and shutdown, the admin trigger over HTTP, and ``reloop demo`` end to end."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reloop_service.config import Settings
from reloop_service.cycle import steps
from reloop_service.cycle.run import run_cycle
from reloop_service.cycle.scheduler import CycleScheduler, catch_up, plan_catch_up, target_day
from reloop_service.registry import cycle_runs, store
from reloop_service.registry.db import make_engine, session_scope
from reloop_service.registry.events import CycleStatus
from tests.support.wait import wait_for

from .cycle_data import DAY0, write_day

Env = Callable[..., Settings]
ROWS = 1200


def _runs(settings: Settings) -> dict[date, Any]:
    engine = make_engine(settings.resolved_database_url)
    try:
        with session_scope(engine, readonly=True) as session:
            return {
                r.cycle_date: r for r in cycle_runs.list_cycle_runs(session, model_name=settings.model_name)
            }
    finally:
        engine.dispose()


# --------------------------------------------------------------------------------- catch-up plan
def test_plan_catch_up_runs_missing_days_in_order_and_bounds_them() -> None:
    d = date(2024, 5, 10)
    plan = plan_catch_up(
        target=d, succeeded={d - timedelta(days=5)}, last_success=d - timedelta(days=5), max_catchup_days=7
    )
    assert plan.to_run == [d - timedelta(days=i) for i in (4, 3, 2, 1, 0)] and plan.beyond_bound == []
    bounded = plan_catch_up(target=d, succeeded=set(), last_success=d - timedelta(days=5), max_catchup_days=2)
    assert bounded.to_run == [d - timedelta(days=1), d]
    assert bounded.beyond_bound == [d - timedelta(days=i) for i in (4, 3, 2)]
    # Days already done inside the window (e.g. backfilled) are not re-run.
    done = {d - timedelta(days=2)}
    assert (
        d - timedelta(days=2)
        not in plan_catch_up(
            target=d, succeeded=done, last_success=d - timedelta(days=3), max_catchup_days=7
        ).to_run
    )
    assert plan_catch_up(target=d, succeeded=set(), last_success=None, max_catchup_days=7).to_run == [d]
    assert plan_catch_up(target=d, succeeded={d}, last_success=d, max_catchup_days=7).to_run == []


def test_target_day_is_yesterday_in_the_configured_zone() -> None:
    settings = Settings(timezone="Asia/Tokyo")
    # 20:00 UTC on May 10 is already May 11 in Tokyo: the cycle processes May 10.
    assert target_day(settings, datetime(2024, 5, 10, 20, 0, tzinfo=UTC)) == date(2024, 5, 10)
    assert target_day(Settings(timezone="UTC"), datetime(2024, 5, 10, 20, 0, tzinfo=UTC)) == date(2024, 5, 9)


def test_catch_up_after_missed_days(sqlite_env: Env, caplog: pytest.LogCaptureFixture) -> None:
    settings = sqlite_env(max_catchup_days=2)
    days = [DAY0 + timedelta(days=i) for i in range(5)]
    for day in days:
        write_day(Path(settings.resolved_logs_uri), day, ROWS)
    assert run_cycle(settings=settings, cycle_date=days[0], actor="test").status == "succeeded"
    with caplog.at_level(logging.INFO, logger="reloop_service.cycle.scheduler"):
        outcomes = catch_up(settings=settings, target=days[4])
    assert [o.cycle_date for o in outcomes] == days[3:]
    assert all(o.status == "succeeded" for o in outcomes)
    # beyond the bound: one line for the whole range, with the command that covers it
    assert f"2 missing day(s) {days[1]}..{days[2]} are older than max_catchup_days=2" in caplog.text
    assert f"reloop cycle backfill --from {days[1]} --to {days[2]}" in caplog.text

    wide = settings.model_copy(update={"max_catchup_days": 7})
    again = catch_up(settings=wide, target=days[4])
    assert again == []  # the last success is days[4]: the older gap needs a backfill, said above

    runs = _runs(settings)
    assert set(runs) == {days[0], days[3], days[4]}
    assert [runs[d].produced_version for d in (days[0], days[3], days[4])] == [1, 2, 3]


def test_scheduler_job_settings_and_clean_stop_mid_cycle(
    sqlite_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopping while a cycle trains: it ends failed at the next step boundary, never left claimed."""
    settings = sqlite_env(schedule_time="03:30", timezone="Europe/Paris", misfire_grace_s=600)
    yesterday = target_day(settings)
    write_day(Path(settings.resolved_logs_uri), yesterday, ROWS)
    in_train = threading.Event()
    real_train = steps.train_candidate

    def slow_train(ctx: steps.CycleContext, **kw: Any) -> Any:
        in_train.set()
        assert ctx.stop is not None
        ctx.stop.wait(30)  # a long training that is still running when SIGTERM arrives
        return real_train(ctx, **kw)

    monkeypatch.setattr(steps, "train_candidate", slow_train)
    sched = CycleScheduler(settings)
    sched.start()
    try:
        job = sched.scheduler.get_job("reloop-daily-cycle")
        assert job is not None and job.coalesce is True and job.max_instances == 1
        assert job.misfire_grace_time == 600
        assert str(job.trigger.timezone) == "Europe/Paris"
        assert job.next_run_time.hour == 3 and job.next_run_time.minute == 30
        assert in_train.wait(60), "the start-up catch-up runs yesterday's cycle"
    finally:
        started = time.monotonic()
        sched.stop()
    assert time.monotonic() - started < 30
    run = _runs(settings)[yesterday]
    assert run.status == CycleStatus.FAILED and "shutting down" in (run.error or "")
    assert run.produced_version is None


# ------------------------------------------------------------------------------- admin trigger
def test_admin_trigger_runs_cycle_in_background(sqlite_env: Env) -> None:
    from fastapi.testclient import TestClient

    from reloop_service.cycle.run import make_cycle_trigger
    from reloop_service.serving.app import create_app

    settings = sqlite_env(admin_token="s3cret")
    write_day(Path(settings.resolved_logs_uri), DAY0, ROWS)
    app = create_app(settings, cycle_trigger=make_cycle_trigger(settings))
    auth = {"Authorization": "Bearer s3cret"}
    with TestClient(app) as client:
        resp = client.post("/v1/admin/cycles", json={"date": DAY0.isoformat()}, headers=auth)
        assert resp.status_code == 202, resp.text
        run_id = resp.json()["run_id"]

        def status() -> str:
            runs = client.get("/v1/admin/cycles", headers=auth).json()["runs"]
            return str(next(r for r in runs if r["id"] == run_id)["status"])

        wait_for(lambda: status() != "running", timeout=90, what=f"run {run_id} to finish", every=0.2)
        assert status() == "succeeded"
        again = client.post("/v1/admin/cycles", json={"date": DAY0.isoformat()}, headers=auth)
        assert again.status_code == 409 and "succeeded" in again.json()["detail"]
        assert client.get("/v1/admin/versions", headers=auth).json()["versions"][0]["version"] == 1


# ------------------------------------------------------------------------------------- the demo
@pytest.mark.slow
def test_reloop_demo_three_days_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from reloop_service.cli import app

    for key in ("RELOOP_DATABASE_URL", "RELOOP_DATA_DIR", "RELOOP_ADMIN_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RELOOP_THREADS", "1")
    folder = tmp_path / "demo"
    result = CliRunner().invoke(
        app, ["demo", "--days", "3", "--impressions", "3000", "--no-serve", "--data-dir", str(folder)]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "reloop db upgrade" in result.output and "logloss Bayes" in result.output
    # the exact command that serves this demo's registry (it is not in the default data folder)
    assert f"RELOOP_DATA_DIR={folder.resolve()} reloop serve" in result.output

    settings = Settings(data_dir=folder, database_url=f"sqlite:///{folder / 'registry.db'}")
    runs = _runs(settings)
    assert [runs[d].status for d in sorted(runs)] == [CycleStatus.SUCCEEDED] * 3
    first, *later = (runs[d] for d in sorted(runs))
    assert first.details.coverage is not None and first.details.coverage.source == "cold_start"
    assert first.details.decision == "promoted"
    for run in later:
        cov, extra, gate = run.details.coverage, run.details.extra, run.details.gate
        assert cov is not None and extra is not None and gate is not None
        # Every impression of days 2 and 3 was scored over HTTP by the production version and archived.
        assert cov.archived == cov.rows == 3000 and cov.recomputed == 0 and cov.missing == 0
        assert extra["bayes_logloss_holdout"] < gate.candidate.logloss
    engine = make_engine(settings.resolved_database_url)
    try:
        with session_scope(engine, readonly=True) as session:
            promoted = store.list_events(session, model_name="ctr", kinds=["promoted"])
    finally:
        engine.dispose()
    assert len(promoted) >= 1 and promoted[-1].version == 1
    assert (folder / "reports" / "history.png").exists()
    archived_versions = {p.name for p in (folder / "archive").rglob("version=*")}
    assert archived_versions and "version=1" in archived_versions


# ------------------------------------------------------------------------------ SIGTERM, for real
@pytest.mark.slow
def test_reloop_scheduler_process_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """A real ``reloop scheduler`` process: start-up catch-up, then SIGTERM exits 0, nothing left claimed."""
    import os
    import signal
    import subprocess
    import sys

    from reloop_service.registry.db import upgrade

    from .cycle_data import make_settings

    url = f"sqlite:///{tmp_path / 'registry.db'}"
    upgrade(url)
    settings = make_settings(tmp_path, url)
    yesterday = target_day(settings)
    write_day(Path(settings.resolved_logs_uri), yesterday, ROWS)
    env = {
        **os.environ,
        "RELOOP_DATA_DIR": str(settings.data_dir),
        "RELOOP_DATABASE_URL": url,
        "RELOOP_SPEC_PATH": str(settings.spec_path),
        "RELOOP_EMBEDDING_DIM": "8",
        "RELOOP_MLP_HIDDEN": "[32, 16]",
        "RELOOP_BATCH_SIZE": "256",
        "RELOOP_THREADS": "1",
        "RELOOP_HEARTBEAT_S": "0.5",
        "RELOOP_SCHEDULER_PORT": "0",  # no /metrics endpoint: nothing to collide with
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "reloop_service.cli", "scheduler"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def finished() -> bool:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            run = _runs(settings).get(yesterday)
            return run is not None and run.status != CycleStatus.RUNNING

        wait_for(finished, timeout=120, what="the scheduler's catch-up cycle to finish", every=0.3)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "catch-up to" in output and "scheduler stopped" in output
    run = _runs(settings)[yesterday]
    assert run.status == CycleStatus.SUCCEEDED and run.produced_version == 1
