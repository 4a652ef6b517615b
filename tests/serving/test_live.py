"""A real ``reloop serve`` (uvicorn on 127.0.0.1): hot swap under load, graceful stop, SIGKILL."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pyarrow.parquet as pq

from reloop_service.data.archive import read_predictions
from tests.support.wait import wait_for

from .conftest import Registry, auth, start_server


@dataclass
class Served:
    started: float
    finished: float
    version: int
    ids: list[str]
    ctr: list[float]


def _client_loop(url: str, stop: threading.Event, out: list[Served], failures: list[str], seed: int) -> None:
    counter = itertools.count()
    with httpx.Client(base_url=url, timeout=10) as client:
        while not stop.is_set():
            n = 1 + next(counter) % 4
            ids = [f"c{seed}-{uuid.uuid4().hex}" for _ in range(n)]
            items = [
                {"features": {"site": f"s{i % 7}", "price": float(i), "tags": ["a"]}, "impression_id": iid}
                for i, iid in enumerate(ids)
            ]
            t0 = time.monotonic()
            try:
                r = client.post("/v1/predict", json={"items": items})
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
                continue
            t1 = time.monotonic()
            if r.status_code != 200:
                failures.append(f"{r.status_code} {r.text}")
                continue
            body = r.json()
            # recorded, not asserted: a client thread that dies says nothing
            if [p["impression_id"] for p in body["predictions"]] != ids:
                failures.append(f"ids out of order: {body}")
                continue
            out.append(Served(t0, t1, body["model_version"], ids, [p["ctr"] for p in body["predictions"]]))


def _allowed(
    version: int, start: float, end: float, changes: list[tuple[float, float, int]], first: int
) -> bool:
    """Was ``version`` production at some instant of [start, end]? A change happened inside its
    admin call window [call_start, call_end], so each segment's bounds are taken at their widest."""
    segments: list[tuple[float, float, int]] = []
    seg_start, seg_version = float("-inf"), first
    for call_start, call_end, new_version in changes:
        segments.append((seg_start, call_end, seg_version))
        seg_start, seg_version = call_start, new_version
    segments.append((seg_start, float("inf"), seg_version))
    return any(v == version and lo <= end and start <= hi for lo, hi, v in segments)


def _wait_traffic_after(served: list[Served], moment: float, *, requests: int = 3) -> None:
    """Wait until ``requests`` predictions that started after ``moment`` have been answered."""
    wait_for(
        lambda: sum(1 for s in served[-100:] if s.started > moment) >= requests,
        timeout=30,
        what=f"{requests} predictions answered after the last change",
        every=0.01,
    )


def test_hot_swap_under_load_then_graceful_stop_archives_exactly_what_was_served(
    registry: Registry, tmp_path: Path
) -> None:
    v1 = registry.add_version(1)
    registry.promote(v1)
    v2 = registry.add_version(2, parent=v1)
    v3 = registry.add_version(3, parent=v1)
    server = start_server(registry.settings, tmp_path)
    stop = threading.Event()
    served: list[Served] = []
    failures: list[str] = []
    threads = [
        threading.Thread(target=_client_loop, args=(server.url, stop, served, failures, i)) for i in range(3)
    ]
    changes: list[tuple[float, float, int]] = []
    try:
        for t in threads:
            t.start()
        _wait_traffic_after(served, float("-inf"))
        with httpx.Client(base_url=server.url, headers=auth(), timeout=30) as admin:
            for i in range(10):
                if i % 2 == 0:
                    call = ("/v1/admin/promote", {"version": v2 if i % 4 == 0 else v3, "reason": f"swap {i}"})
                else:
                    call = ("/v1/admin/rollback", {"reason": f"back {i}"})
                t0 = time.monotonic()
                r = admin.post(call[0], json=call[1])
                t1 = time.monotonic()
                assert r.status_code == 200, r.text
                changes.append((t0, t1, r.json()["version"]["version"]))
                _wait_traffic_after(served, t1)  # every version serves some traffic before the next change
        _wait_traffic_after(served, changes[-1][1], requests=10)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert [c[2] for c in changes] == [2, 1, 3, 1, 2, 1, 3, 1, 2, 1]
    assert failures == []
    assert len(served) > 50
    assert {s.version for s in served} == {1, 2, 3}
    bad = [s for s in served if not _allowed(s.version, s.started, s.finished, changes, first=1)]
    assert bad == []

    # graceful stop: SIGTERM, in-flight done, archive flushed
    server.proc.send_signal(signal.SIGTERM)
    # uvicorn re-raises the signal after its graceful shutdown, so the exit status is -SIGTERM
    assert server.proc.wait(timeout=30) in (0, -signal.SIGTERM), server.log()
    assert "archive flushed" in server.log() and "Application shutdown complete" in server.log()
    today = datetime.now(UTC).date()
    archived: dict[str, tuple[int, float]] = {}
    for version in (1, 2, 3):
        for batch in read_predictions(
            registry.settings.resolved_archive_uri, version=version, start=today, end=today
        ):
            for row in batch.to_pylist():
                assert row["impression_id"] not in archived
                archived[row["impression_id"]] = (row["model_version"], row["ctr"])
    received = {iid: (s.version, c) for s in served for iid, c in zip(s.ids, s.ctr, strict=True)}
    assert archived == received


def test_sigkill_mid_write_leaves_only_complete_parts(registry: Registry, tmp_path: Path) -> None:
    registry.promote(registry.add_version(1))
    server = start_server(
        registry.settings,
        tmp_path,
        RELOOP_ARCHIVE_FLUSH_ROWS="20",
        RELOOP_ARCHIVE_FLUSH_SECONDS="0.05",
        RELOOP_REPLICA_ID="killme",
    )
    stop = threading.Event()
    served: list[Served] = []
    failures: list[str] = []
    threads = [
        threading.Thread(target=_client_loop, args=(server.url, stop, served, failures, i)) for i in range(2)
    ]
    for t in threads:
        t.start()
    archive = Path(registry.settings.resolved_archive_uri)
    try:
        # Kill while the flusher is busy: several parts already written, more on the way.
        try:
            wait_for(
                lambda: len(list(archive.rglob("part-killme-*.parquet"))) >= 5,
                timeout=60,
                what="five archive parts",
                every=0.01,
            )
        except AssertionError as exc:  # say why: no traffic, failed requests, or a stuck flusher
            parts = sorted(p.name for p in archive.rglob("*") if p.is_file())
            raise AssertionError(
                f"{exc}; served {len(served)} requests, {len(failures)} failures {failures[:3]}, "
                f"clients alive {[t.is_alive() for t in threads]}, server exit {server.proc.poll()}, "
                f"archive files {parts[:10]}\nserver log:\n{server.log()[-4000:]}"
            ) from None
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(timeout=10)
    finally:
        stop.set()
        for t in threads:
            t.join()
    folder = Path(registry.settings.resolved_archive_uri) / f"dt={datetime.now(UTC).date()}" / "version=1"
    parts = [p for p in folder.iterdir() if p.name.startswith("part-")]
    assert parts and all(p.name.startswith("part-killme-") for p in parts)
    for p in parts:
        pq.read_metadata(p)  # every visible part is complete
    others = [p.name for p in folder.iterdir() if not p.name.startswith("part-")]
    assert all(name.startswith(".tmp-") for name in others), others
    today = datetime.now(UTC).date()
    archived = [
        iid
        for b in read_predictions(registry.settings.resolved_archive_uri, version=1, start=today, end=today)
        for iid in b.column("impression_id").to_pylist()
    ]
    received = {iid for s in served for iid in s.ids}
    sent_or_received = received | {f for f in archived if f.startswith("c")}  # responses lost to the kill
    assert len(archived) == len(set(archived)) and set(archived) <= sent_or_received
    lost = received - set(archived)
    # only the unflushed buffer is lost: at most a few flush intervals' worth of rows
    assert len(lost) <= registry.settings.archive_buffer_rows
    assert len(archived) >= len(received) - 400, (len(archived), len(received))
