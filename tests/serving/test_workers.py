"""``reloop serve --workers 2``: both workers serve, archive and hot-swap; /metrics sums them."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import httpx
import pyarrow.parquet as pq

from tests.support.wait import wait_for

from .conftest import Registry, auth, start_server

PART = re.compile(r"part-(.+)-[0-9a-f]{32}\.parquet$")
MODEL_INFO = re.compile(r"^reloop_model_info\{([^}]*)\} ([0-9.e+-]+)$", re.M)


def _served_versions(metrics: str) -> dict[str, str]:
    """pid -> the version that worker serves (its reloop_model_info series at 1)."""
    out: dict[str, str] = {}
    for labels, value in MODEL_INFO.findall(metrics):
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if float(value) == 1.0:
            out[fields["pid"]] = fields["version"]
    return out


def _total(metrics: str, name: str) -> float:
    """The sum of every series of ``name``."""
    return sum(float(v) for v in re.findall(rf"^{name}(?:\{{[^}}]*\}})? ([0-9.e+]+)$", metrics, re.M))


def _load(url: str, stop: threading.Event, versions: list[int], failures: list[str]) -> None:
    """Short-lived connections (a new one every few requests) so the kernel spreads them."""
    n = 0
    while not stop.is_set():
        with httpx.Client(base_url=url, timeout=10) as client:
            for _ in range(3):
                n += 1
                item = {"features": {"site": f"s{n % 9}", "price": 1.5, "tags": ["a"]}}
                try:
                    r = client.post("/v1/predict", json={"items": [item, item]})
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text}")
                else:
                    versions.append(r.json()["model_version"])


def _wait(predicate, what: str, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    wait_for(predicate, timeout=timeout, what=what)


def test_two_workers_serve_archive_and_hot_swap_together(registry: Registry, tmp_path: Path) -> None:
    v1 = registry.add_version(1)
    registry.promote(v1)
    v2 = registry.add_version(2, parent=v1)
    server = start_server(registry.settings, tmp_path, "--workers", "2", RELOOP_REPLICA_ID="box")
    stop = threading.Event()
    versions: list[int] = []
    failures: list[str] = []
    loaders = [threading.Thread(target=_load, args=(server.url, stop, versions, failures)) for _ in range(3)]
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            _wait(lambda: len(_served_versions(client.get("/metrics").text)) == 2, "both workers up")
            assert set(_served_versions(client.get("/metrics").text).values()) == {str(v1)}
            for t in loaders:
                t.start()
            _wait(lambda: len(versions) >= 60, "traffic before the swap")

            registry.promote(v2)  # through the registry only: each worker's watcher must see it
            _wait(
                lambda: set(_served_versions(client.get("/metrics").text).values()) == {str(v2)},
                "both workers on v2",
            )
            swapped_at = len(versions)
            _wait(lambda: len(versions) >= swapped_at + 60, "traffic after the swap")

            # a forced reload reaches every worker (the signal file): one forced poll in each
            r = client.post("/v1/admin/reload", headers=auth())
            assert r.status_code == 200, r.text
            _wait(
                lambda: _total(client.get("/metrics").text, "reloop_model_forced_reloads_total") == 2,
                "reloads",
            )
            stop.set()
            for t in loaders:
                t.join()
            metrics = client.get("/metrics").text
            assert 'route="/v1/predict"' in metrics
            assert _total(metrics, "reloop_predictions_total") == 2 * len(versions)  # summed over workers
    finally:
        stop.set()
        for t in loaders:
            if t.is_alive():
                t.join()
        server.proc.terminate()
        server.proc.wait(timeout=60)

    assert not failures, failures[:5]
    assert set(versions[swapped_at:]) == {v2}
    # each worker wrote its own parts (replica id + pid), and together they hold every prediction
    parts = sorted(Path(registry.settings.resolved_archive_uri).rglob("part-*.parquet"))
    replicas = {PART.search(p.name).group(1) for p in parts}  # type: ignore[union-attr]
    assert len(replicas) == 2 and all(r.startswith("box_") for r in replicas), replicas
    rows = sum(pq.read_metadata(p).num_rows for p in parts)
    assert rows == 2 * len(versions)
