"""``reloop bench serve`` counts a run's archive work until the run's rows are written (a real server)."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from reloop_service.serving import load_bench


def _predict(port: int, n: int) -> None:
    body = json.dumps({"items": [{"features": r} for r in load_bench.demo_records(n, seed=3)]}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
    finally:
        conn.close()


def _rows_on_disk(root: Path) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in root.rglob("part-*.parquet"))


def test_await_archived_returns_once_the_rows_are_in_parts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A timer long enough that the rows are still buffered when the wait starts: only a flush
    # triggered by the row threshold writes them, so the wait must see the server's own count.
    monkeypatch.setenv("RELOOP_ARCHIVE_FLUSH_SECONDS", "600")
    monkeypatch.setenv("RELOOP_ARCHIVE_FLUSH_ROWS", "150")
    load_bench._setup_registry(tmp_path)
    proc, port = load_bench._start(tmp_path, True)
    try:
        archive = tmp_path / f"archive-{port}"
        assert load_bench._archived_rows(port) == 0
        _predict(port, 100)
        # 100 rows buffered, under the 150-row threshold: nothing is written, and the wait says so
        assert not load_bench._await_archived(port, 100, timeout=1.0)
        assert _rows_on_disk(archive) == 0
        _predict(port, 100)  # 200 rows: past the threshold, the flusher writes them all
        assert load_bench._await_archived(port, 200, timeout=60.0)
        assert load_bench._archived_rows(port) == 200
        assert _rows_on_disk(archive) == 200
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_bench_serve_refuses_a_folder_that_holds_anything(tmp_path: Path) -> None:
    # e.g. a service's data folder: the bench would promote its demo model over that registry's
    data = tmp_path / "data"
    data.mkdir()
    (data / "registry.db").write_bytes(b"not the bench's")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELOOP_")}
    res = subprocess.run(
        [sys.executable, "-m", "reloop_service.cli", "bench", "serve", "--data-dir", str(data)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert f"--data-dir {data}: not empty" in " ".join(res.stderr.split())
    assert (data / "registry.db").read_bytes() == b"not the bench's"
    assert sorted(p.name for p in data.iterdir()) == ["registry.db"]
