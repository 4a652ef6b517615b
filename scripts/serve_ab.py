"""Servers side by side: batch-100 server CPU a prediction of several checkouts under the same load.

    python scripts/serve_ab.py OLD_CHECKOUT:on NEW_CHECKOUT:on NEW_CHECKOUT:off [--rounds 4]

Each argument is a checkout (its ``reloop serve`` runs with ``PYTHONPATH`` set to it) and whether
its archive is on. All servers run at once on the demo model of ``reloop bench serve``; one loader
process sends batches of 100 to every server in turn from 4 keep-alive threads, so each server
sees the same machine load at the same moments. On a shared machine, where one
``reloop bench serve`` run after another moves by ±20% with the load, the differences between
servers in one round are steady to a few percent. Prints each round's server CPU (from /proc) a
prediction per server, and the means (docs/benchmarks.md, issue 13, fifth round).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq

from reloop_service.clitools import serve_argv
from reloop_service.serving import load_bench


def _start(data_dir: Path, checkout: Path, archive: bool) -> tuple[subprocess.Popen[bytes], int]:
    port = load_bench._free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(checkout),
        "RELOOP_DATA_DIR": str(data_dir),
        "RELOOP_ARCHIVE_ENABLED": "true" if archive else "false",
        "RELOOP_THREADS": "1",
        "RELOOP_ARCHIVE_URI": str(data_dir / f"archive-{port}"),
    }
    proc = subprocess.Popen(
        serve_argv(port), env=env, cwd=checkout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server of {checkout} did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("servers", nargs="+", help="CHECKOUT:on or CHECKOUT:off")
    parser.add_argument("--rounds", type=int, default=4, help="Measured rounds (after one warm-up round).")
    parser.add_argument("--requests", type=int, default=250, help="Requests per server, thread and round.")
    args = parser.parse_args()
    configs = []
    for arg in args.servers:
        path, _, mode = arg.rpartition(":")
        if mode not in ("on", "off") or not path:
            parser.error(f"{arg!r}: expected CHECKOUT:on or CHECKOUT:off")
        configs.append((Path(path).resolve(), mode == "on", f"{Path(path).name}:{mode}"))
    bodies = [
        json.dumps({"items": [{"features": r} for r in load_bench.demo_records(100, seed=s)]}).encode()
        for s in range(8)
    ]
    threads_n = 4
    with tempfile.TemporaryDirectory(prefix="serve-ab-") as tmp:
        data_dir = Path(tmp)
        load_bench._setup_registry(data_dir)
        servers = []
        try:
            for checkout, archive, _ in configs:
                servers.append(_start(data_dir, checkout, archive))
            sums = [0.0] * len(servers)
            for rnd in range(args.rounds + 1):
                cpu0 = [load_bench._cpu_seconds(proc.pid) for proc, _ in servers]

                def load(k: int) -> None:
                    conns = [http.client.HTTPConnection("127.0.0.1", port) for _, port in servers]
                    for i in range(args.requests):
                        for j in range(len(servers)):
                            s = (j + k + i) % len(servers)  # every server first in turn
                            load_bench._post(conns[s], bodies[(i + k) % len(bodies)])

                workers = [threading.Thread(target=load, args=(k,)) for k in range(threads_n)]
                for w in workers:
                    w.start()
                for w in workers:
                    w.join()
                preds = threads_n * args.requests * 100
                cpu = [
                    (load_bench._cpu_seconds(proc.pid) - c0) * 1e6 / preds
                    for (proc, _), c0 in zip(servers, cpu0, strict=True)
                ]
                if rnd == 0:
                    continue  # warm-up
                sums = [a + b for a, b in zip(sums, cpu, strict=True)]
                line = "  ".join(f"{name} {v:.2f}" for (_, _, name), v in zip(configs, cpu, strict=True))
                print(f"round {rnd} (load {os.getloadavg()[0]:.1f}): {line}", flush=True)
            means = "  ".join(
                f"{name} {s / args.rounds:.2f}" for (_, _, name), s in zip(configs, sums, strict=True)
            )
            print(f"mean server CPU µs a prediction: {means}")
        finally:
            for proc, _ in servers:
                proc.terminate()
            for proc, _ in servers:
                proc.wait(timeout=60)
        for (_, archive, name), (_, port) in zip(configs, servers, strict=True):
            if archive:  # what a graceful stop left on disk: every prediction, in how many bytes
                parts = list((data_dir / f"archive-{port}").rglob("part-*.parquet"))
                rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
                size = sum(p.stat().st_size for p in parts)
                print(f"{name}: {len(parts)} parts, {rows} rows, {size / max(rows, 1):.1f} bytes a row")


if __name__ == "__main__":
    main()
