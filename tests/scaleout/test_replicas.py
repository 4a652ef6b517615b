"""Two ``reloop serve`` processes sharing one PostgreSQL registry and one archive root.

Promote and roll back through one replica's admin API; both must serve the new production version
within 2 s. Their archive parts carry their replica ids and never collide, and the next cycle's
prior join reads the predictions of both.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from reloop_service.clitools import serve_argv
from reloop_service.config import Settings
from reloop_service.data.simulator import ClickSimulator, SimulatorConfig
from tests.support.wait import wait_for, wait_http_ok

from .conftest import free_port

DAY0 = date(2024, 1, 1)
DAY1 = date(2024, 1, 2)
ROWS = 1200
TOKEN = "replica-test-token-0123456789abcdef"
SWAP_DEADLINE_S = 2.0


def base_env(tmp_path: Path, db_url: str) -> dict[str, str]:
    return {
        "RELOOP_DATA_DIR": str(tmp_path / "data"),
        "RELOOP_DATABASE_URL": db_url,
        "RELOOP_ARCHIVE_URI": str(tmp_path / "shared-archive"),
        "RELOOP_ADMIN_TOKEN": TOKEN,
        "RELOOP_EMBEDDING_DIM": "8",
        "RELOOP_MLP_HIDDEN": "[32, 16]",
        "RELOOP_BATCH_SIZE": "256",
        "RELOOP_THREADS": "1",
        "RELOOP_CYCLE_ATTEMPTS": "1",
        "RELOOP_CYCLE_BACKOFF_S": "0",
        "RELOOP_GATE_MAX_AUC_DROP": "0.5",
        "RELOOP_GATE_MAX_LOGLOSS_RISE": "0.5",
        "RELOOP_WATCH_INTERVAL_S": "0.2",
        "RELOOP_ARCHIVE_FLUSH_SECONDS": "0.3",
    }


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> Settings:
    with monkeypatch.context() as m:
        for key, value in env.items():
            m.setenv(key, value)
        return Settings(**overrides)


class Replica:
    """One ``reloop serve`` subprocess on its own port."""

    def __init__(self, replica_id: str, env: dict[str, str], log_path: Path) -> None:
        self.replica_id = replica_id
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            serve_argv(self.port),
            env={**os.environ, **env, "RELOOP_REPLICA_ID": replica_id, "OMP_NUM_THREADS": "1"},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=self.url, timeout=10.0)

    def wait_ready(self, timeout: float = 60.0) -> None:
        wait_http_ok(
            f"{self.url}/readyz",
            timeout=timeout,
            proc=self.proc,
            log=lambda: f"replica {self.replica_id}: {self.log_text()[-3000:]}",
            client=self.client,
        )

    def version(self) -> int:
        resp = self.client.get("/v1/model")
        assert resp.status_code == 200, resp.text
        return int(resp.json()["model_version"])

    def log_text(self) -> str:
        self._log.flush()
        return Path(self._log.name).read_text()

    def stop(self) -> None:
        """SIGTERM: uvicorn shuts down gracefully and the archive flushes what it buffered."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.client.close()
        self._log.close()


@pytest.fixture
def replicas_env(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A migrated PostgreSQL registry with version 1 in production, and day 1's logs written."""
    from reloop_service.cycle.run import run_cycle
    from reloop_service.registry.db import upgrade

    env = base_env(tmp_path, db_url)
    settings = settings_from(env, monkeypatch)
    upgrade(settings.resolved_database_url)
    sim = ClickSimulator(
        5, start=DAY0, config=SimulatorConfig(impressions_per_day=ROWS, n_users=300, n_items=100)
    )
    for day in (DAY0, DAY1):
        table, _ = sim.simulate_day(day)
        sim.write_day(settings.resolved_logs_uri, day, table)
    first = run_cycle(settings=settings, cycle_date=DAY0, actor="test")
    assert first.status == "succeeded" and first.version == 1 and first.promoted, first
    return env


@pytest.fixture
def two_replicas(replicas_env: dict[str, str], tmp_path: Path) -> Iterator[list[Replica]]:
    started = [Replica(rid, replicas_env, tmp_path / f"{rid}.log") for rid in ("api-a", "api-b")]
    try:
        for replica in started:
            replica.wait_ready()
        yield started
    finally:
        for replica in started:
            replica.stop()


def wait_all_serve(replicas: list[Replica], version: int) -> float:
    """Seconds until every replica serves ``version``; fails past the deadline."""
    t0 = time.monotonic()
    wait_for(
        lambda: all(r.version() == version for r in replicas),
        timeout=SWAP_DEADLINE_S,
        what=f"every replica to serve version {version}",
    )
    return time.monotonic() - t0


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_replicas_share_registry_and_archive(
    two_replicas: list[Replica], replicas_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from reloop_service.cycle.run import run_cycle
    from reloop_service.data.archive import read_predictions

    a, b = two_replicas
    assert a.version() == 1 and b.version() == 1

    # Day 1's impressions: half served by each replica.
    sim = ClickSimulator(
        5, start=DAY0, config=SimulatorConfig(impressions_per_day=ROWS, n_users=300, n_items=100)
    )
    table, _ = sim.simulate_day(DAY1)
    features = list(sim.spec.feature_names)
    records = table.select([sim.spec.impression_id, *features]).to_pylist()
    served: dict[str, set[str]] = {"api-a": set(), "api-b": set()}
    for i, start in enumerate(range(0, len(records), 300)):
        replica = (a, b)[i % 2]
        chunk = records[start : start + 300]
        items = [
            {"impression_id": r[sim.spec.impression_id], "features": {k: r[k] for k in features}}
            for r in chunk
        ]
        resp = replica.client.post("/v1/predict", json={"items": items})
        assert resp.status_code == 200, resp.text
        served[replica.replica_id].update(r[sim.spec.impression_id] for r in chunk)
    assert served["api-a"] and served["api-b"]

    # Wait for both replicas' archive flushes (RELOOP_ARCHIVE_FLUSH_SECONDS=0.3).
    archive = replicas_env["RELOOP_ARCHIVE_URI"]
    today = datetime.now(UTC).date()  # archive partitions are UTC serving days; allow midnight

    def archived_ids() -> set[str]:
        return {
            i
            for batch in read_predictions(
                archive, version=1, start=today - timedelta(days=1), end=today + timedelta(days=1)
            )
            for i in batch.column("impression_id").to_pylist()
        }

    wait_for(
        lambda: len(archived_ids()) >= ROWS, timeout=15, what="both replicas' archive flushes", every=0.2
    )
    assert len(archived_ids()) == ROWS

    # Part names carry the replica ids and never collide.
    parts = sorted(Path(archive).rglob("part-*.parquet"))
    names = [p.name for p in parts]
    assert len(names) == len(set(names))
    owners = {n.split("-")[1] for n in names}
    assert owners == {"api_a", "api_b"}, names

    # The next cycle's prior join reads the predictions of both replicas (not promoted: v2 waits).
    settings = settings_from(replicas_env, monkeypatch, auto_promote=False)
    second = run_cycle(settings=settings, cycle_date=DAY1, actor="test")
    assert second.status == "succeeded" and second.version == 2 and not second.promoted, second
    assert second.record.coverage is not None and second.record.coverage.archived == ROWS, (
        second.record.coverage
    )
    assert a.version() == 1 and b.version() == 1

    # Promote through replica A's admin API: both serve v2 within 2 s.
    auth = {"Authorization": f"Bearer {TOKEN}"}
    resp = a.client.post("/v1/admin/promote", json={"version": 2, "reason": "replica test"}, headers=auth)
    assert resp.status_code == 200, resp.text
    assert a.version() == 2  # the replica that promoted swaps before answering
    wait_all_serve([a, b], 2)

    # Roll back through the same replica: both are back on v1 within 2 s.
    resp = a.client.post("/v1/admin/rollback", json={"reason": "replica test"}, headers=auth)
    assert resp.status_code == 200, resp.text
    wait_all_serve([a, b], 1)
