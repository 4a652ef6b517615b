"""Unconditional promotes (no ``expected_current``) racing through a real replica never fail."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from . import faultkit as fk

CLIENTS = 6
PROMOTES_EACH = 8


def test_concurrent_unconditional_promotes_all_succeed(db_url: str, tmp_path: Path) -> None:
    reg = fk.Registry(db_url, tmp_path / "data")
    try:
        versions = [reg.add_version(seed) for seed in (1, 2, 3)]
        reg.promote(versions[0])
        env = fk.reloop_env(tmp_path / "data", db_url, watch_interval_s=0.2)
        with fk.serving(env, tmp_path) as server:

            def client(n: int) -> list[tuple[int, int, str]]:
                out = []
                with httpx.Client(base_url=server.url, timeout=60, headers=fk.AUTH) as http:
                    for i in range(PROMOTES_EACH):
                        target = versions[(n + i) % len(versions)]
                        r = http.post("/v1/admin/promote", json={"version": target, "reason": f"c{n}"})
                        got = r.json()["version"]["version"] if r.status_code == 200 else -1
                        out.append((r.status_code, target, "" if got == target else r.text))
                return out

            with ThreadPoolExecutor(CLIENTS) as pool:
                results = [r for batch in pool.map(client, range(CLIENTS)) for r in batch]
        assert [r for r in results if r[0] != 200 or r[2]] == []
        # each promote that changed production is one audited link of an unbroken chain
        chain = reg.promoted_events()
        assert all(prev[1] == nxt[0] for prev, nxt in itertools.pairwise(chain))
        assert chain[-1][1] == reg.production()
    finally:
        reg.close()
