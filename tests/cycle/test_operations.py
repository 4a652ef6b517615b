"""What operators see: the alert webhook (a real local HTTP receiver), cycle metrics, the scheduler's
/metrics and /healthz, failed cycles in the history, and the feature-spec mismatch warning."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from reloop_service.config import Settings
from reloop_service.cycle.observe import CYCLE_METRICS
from reloop_service.cycle.run import run_cycle
from reloop_service.cycle.scheduler import CycleScheduler, target_day
from tests.support.net import free_port
from tests.support.wait import wait_for

from .cycle_data import DAY0, write_day

Env = Callable[..., Settings]
ROWS = 2000


class Receiver:
    """A real HTTP server on 127.0.0.1 that records JSON bodies; the first ``fail_first`` POSTs get 503."""

    def __init__(self, fail_first: int = 0) -> None:
        self.events: list[dict[str, Any]] = []
        self.attempts = 0
        self.fail_first = fail_first
        self.got = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with outer.got:
                    outer.attempts += 1
                    failing = outer.attempts <= outer.fail_first
                    if not failing:
                        outer.events.append(json.loads(body))
                    outer.got.notify_all()
                self.send_response(503 if failing else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=secret-in-url"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, kind: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.got:
            while True:
                found = [e for e in self.events if e["kind"] == kind]
                if found:
                    return found[-1]
                left = deadline - time.monotonic()
                assert left > 0, f"no {kind} event; got {self.events}"
                self.got.wait(left)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_first=1)  # the first delivery fails: retries must cover it
    yield r
    r.close()


def _corrupt_day(settings: Settings, day: Any) -> None:
    folder = Path(settings.resolved_logs_uri) / f"dt={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "part-0.parquet").write_bytes(b"PAR1 this is not parquet")


def test_webhook_hears_a_failed_cycle_and_a_rollback(
    sqlite_env: Env, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    from reloop_service.cli import app

    settings = sqlite_env(alert_webhook_url=receiver.url, alert_attempts=4)
    for i in range(2):
        write_day(Path(settings.resolved_logs_uri), DAY0 + timedelta(days=i), ROWS)
    bad_day = DAY0 + timedelta(days=2)
    _corrupt_day(settings, bad_day)
    assert run_cycle(settings=settings, cycle_date=DAY0, actor="test").promoted
    assert run_cycle(settings=settings, cycle_date=DAY0 + timedelta(days=1), actor="test").promoted
    failed = run_cycle(settings=settings, cycle_date=bad_day, actor="test")
    assert failed.status == "failed"

    event = receiver.wait_for("cycle_failed")
    assert receiver.attempts >= 2  # 503 first, then delivered
    assert event["schema"] == "reloop.alert/1" and event["cycle_date"] == bad_day.isoformat()
    assert event["run_id"] == failed.run_id and event["from_version"] == 2
    assert "step ingest" in event["reason"] and event["model_name"] == settings.model_name
    assert "secret-in-url" not in caplog.text  # only scheme and host are logged

    no_data_day = DAY0 + timedelta(days=3)  # no partition at all: the cycle is skipped, not failed
    skipped = run_cycle(settings=settings, cycle_date=no_data_day, actor="test")
    assert skipped.status == "skipped"
    event = receiver.wait_for("cycle_skipped")
    assert event["cycle_date"] == no_data_day.isoformat() and "no click logs" in event["reason"]

    env = {
        "RELOOP_DATA_DIR": str(settings.data_dir),
        "RELOOP_DATABASE_URL": settings.resolved_database_url,
        "RELOOP_ALERT_WEBHOOK_URL": receiver.url,
    }
    res = CliRunner().invoke(app, ["rollback", "--reason", "CTR dropped", "--actor", "ops"], env=env)
    assert res.exit_code == 0, res.output
    rollback = receiver.wait_for("rollback")
    assert rollback["to_version"] == 1 and rollback["from_version"] == 2
    assert rollback["actor"] == "ops" and rollback["reason"] == "CTR dropped"

    # the failed cycle is in the history, next to the registry events
    history = CliRunner().invoke(app, ["history", "--json"], env=env)
    assert history.exit_code == 0, history.output
    rows = json.loads(history.stdout)
    kinds = [r["kind"] for r in rows]
    assert "cycle_failed" in kinds and "cycle_skipped" in kinds and "rolled_back" in kinds
    failed_row = next(r for r in rows if r["kind"] == "cycle_failed")
    assert failed_row["cycle_date"] == bad_day.isoformat() and "ingest" in failed_row["reason"]

    # metrics of this process counted the three cycles
    assert CYCLE_METRICS.last_status.labels("skipped")._value.get() == 1  # the last one run here
    assert CYCLE_METRICS.runs.labels("failed")._value.get() >= 1
    assert CYCLE_METRICS.last_success_date._value.get() > 0


def test_an_unreachable_webhook_never_fails_the_cycle(sqlite_env: Env) -> None:
    port = free_port()  # nobody listens there
    settings = sqlite_env(alert_webhook_url=f"http://127.0.0.1:{port}/x", alert_attempts=2, alert_timeout_s=1)
    _corrupt_day(settings, DAY0)
    outcome = run_cycle(settings=settings, cycle_date=DAY0, actor="test")
    assert outcome.status == "failed" and outcome.run_id is not None


def test_scheduler_serves_metrics_and_health(sqlite_env: Env) -> None:
    port = free_port()
    settings = sqlite_env(scheduler_port=port, max_catchup_days=1)
    write_day(Path(settings.resolved_logs_uri), target_day(settings), ROWS)
    sched = CycleScheduler(settings)
    sched.start()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: (
                'reloop_cycle_runs_total{status="succeeded"}' in httpx.get(f"{base}/metrics", timeout=5).text
            ),
            timeout=120,
            what="the scheduled cycle to succeed",
            every=0.3,
        )
        health = httpx.get(f"{base}/healthz", timeout=5)
        text = httpx.get(f"{base}/metrics", timeout=5).text
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert health.json()["next_run"]
        for name in (
            "reloop_cycle_last_success_timestamp_seconds",
            "reloop_cycle_last_duration_seconds",
            "reloop_cycle_last_gate_passed",
            'reloop_cycle_last_rows{kind="train"}',
            'reloop_cycle_last_prior_coverage_ratio{source="missing"}',
            'reloop_cycle_gate_outcomes_total{decision="promoted"}',
            "reloop_scheduler_up 1.0",
            "reloop_scheduler_next_run_timestamp_seconds",
        ):
            assert name in text, name
        assert httpx.get(f"{base}/nope", timeout=5).status_code == 404
    finally:
        sched.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_a_spec_file_that_differs_from_production_warns_or_stops(sqlite_env: Env, tmp_path: Path) -> None:
    from reloop_service.cli import app
    from reloop_service.cycle.speccheck import spec_mismatch

    settings = sqlite_env()
    write_day(Path(settings.resolved_logs_uri), DAY0, ROWS)
    assert run_cycle(settings=settings, cycle_date=DAY0, actor="test").promoted
    assert spec_mismatch(settings) is None  # the file production was trained with
    edited = tmp_path / "edited.toml"
    assert settings.spec_path is not None
    edited.write_text(settings.spec_path.read_text().replace('name = "device"', 'name = "browser"'))
    changed = settings.model_copy(update={"spec_path": edited})
    mismatch = spec_mismatch(changed)
    assert (
        mismatch is not None and "browser" in mismatch.message() and "RELOOP_SPEC_PATH" in mismatch.message()
    )

    env = {
        "RELOOP_DATA_DIR": str(settings.data_dir),
        "RELOOP_DATABASE_URL": settings.resolved_database_url,
        "RELOOP_SPEC_PATH": str(edited),
        "RELOOP_EMBEDDING_DIM": "8",
        "RELOOP_MLP_HIDDEN": "[32, 16]",
    }
    day = (DAY0 + timedelta(days=1)).isoformat()
    strict = CliRunner().invoke(app, ["cycle", "run", "--date", day, "--strict-spec"], env=env)
    assert strict.exit_code == 2 and "differs from the spec of production version 1" in strict.stderr
    assert "--strict-spec" in strict.stderr
