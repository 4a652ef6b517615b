"""``reloop bench soak``: a minute of mixed traffic on a real server while production moves, then a SIGKILL.

What runs: two cycles in this process make versions 1 and 2 from simulated click logs; a real
``reloop serve`` subprocess then takes predict traffic from a few keep-alive clients (batches of 1 to 200
items, the impressions of the next day, each with its impression id) while an operator thread promotes and
rolls back every few seconds and, a third of the way in, triggers that day's cycle through the admin API (it
trains, gates and registers version 3 inside the server under load). At the end the server is killed with
SIGKILL (an unclean stop), and the prediction archive on disk is compared with what the clients received.

What it prints: requests, errors and 5xx; predictions served, archived and lost (served but not in the
archive after the SIGKILL: what the buffer held, at most one ``RELOOP_ARCHIVE_FLUSH_SECONDS`` of traffic);
the server's peak resident memory; and which versions served how many predictions.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from reloop_service.clitools import console, serve_argv

TOKEN = "soak-admin-token"
START = date(2024, 1, 1)
BATCH_SIZES = (1, 1, 5, 20, 50, 200)


@dataclass
class SoakResult:
    seconds: float
    requests: int = 0
    errors: int = 0
    status_5xx: int = 0
    served: int = 0
    archived: int = 0
    lost: int = 0
    peak_rss_mb: float = 0.0
    versions: Counter[int] = field(default_factory=Counter)
    admin: Counter[str] = field(default_factory=Counter)
    cycle: str = "not triggered"
    flush_seconds: float = 5.0

    def rows(self) -> list[tuple[str, str]]:
        versions = ", ".join(f"v{v}: {n}" for v, n in sorted(self.versions.items()))
        admin = ", ".join(f"{k} {n}" for k, n in sorted(self.admin.items()))
        return [
            ("duration", f"{self.seconds:.0f} s"),
            ("requests", str(self.requests)),
            ("errors (non-200 or no answer)", str(self.errors)),
            ("5xx", str(self.status_5xx)),
            ("predictions served", str(self.served)),
            ("predictions archived", str(self.archived)),
            (f"lost after SIGKILL (flush interval {self.flush_seconds:g} s)", str(self.lost)),
            ("peak RSS of the server", f"{self.peak_rss_mb:.0f} MB"),
            ("predictions per version", versions),
            ("admin calls", admin),
            ("cycle under load", self.cycle),
        ]


def _env(data_dir: Path, flush_seconds: float) -> dict[str, str]:
    return {
        **os.environ,
        "RELOOP_DATA_DIR": str(data_dir),
        "RELOOP_DATABASE_URL": f"sqlite:///{data_dir / 'registry.db'}",
        "RELOOP_ADMIN_TOKEN": TOKEN,
        "RELOOP_EMBEDDING_DIM": "8",
        "RELOOP_MLP_HIDDEN": "[64,32]",
        "RELOOP_BATCH_SIZE": "1024",
        "RELOOP_THREADS": "1",
        "RELOOP_WATCH_INTERVAL_S": "0.5",
        "RELOOP_ARCHIVE_FLUSH_SECONDS": str(flush_seconds),
        "RELOOP_CYCLE_ATTEMPTS": "1",
        "RELOOP_GATE_MAX_AUC_DROP": "0.5",
        "RELOOP_GATE_MAX_LOGLOSS_RISE": "0.5",
        "RELOOP_REPORT_HISTORY_PLOT": "false",
        "RELOOP_MAX_BATCH": "1000",
    }


def _prepare(data_dir: Path, env: dict[str, str], impressions: int) -> list[dict[str, Any]]:
    """Logs for three days, versions 1 and 2 from the first two; returns day 3's impressions."""
    from reloop_service.config import Settings
    from reloop_service.cycle.run import run_cycle
    from reloop_service.data.simulator import ClickSimulator, SimulatorConfig
    from reloop_service.registry.db import upgrade

    sim = ClickSimulator(0, start=START, config=SimulatorConfig(impressions_per_day=impressions))
    for i in range(3):
        table, _ = sim.simulate_day(START + timedelta(days=i))
        sim.write_day(str(data_dir / "logs"), START + timedelta(days=i), table)
    values: dict[str, Any] = {
        k[len("RELOOP_") :].lower(): v for k, v in env.items() if k.startswith("RELOOP_")
    }
    values["mlp_hidden"] = json.loads(values["mlp_hidden"])
    settings = Settings(**values)
    upgrade(settings.resolved_database_url)
    for i in range(2):
        outcome = run_cycle(settings=settings, cycle_date=START + timedelta(days=i), actor="soak")
        if outcome.status != "succeeded":
            raise RuntimeError(f"setup cycle {START + timedelta(days=i)} {outcome.status}: {outcome.error}")
    features = sim.spec.feature_names
    return [
        {"impression_id": row["impression_id"], "features": {k: row.get(k) for k in features}}
        for row in sim.impressions(START + timedelta(days=2))
    ]


def _start_server(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen(
        serve_argv(port),
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            status, _ = _call(port, "GET", "/readyz")
            if status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become ready")


def _call(port: int, method: str, path: str, body: Any = None, conn: Any = None) -> tuple[int, Any]:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if data else None
    finally:
        if own:
            conn.close()


def _rss_mb(pid: int, key: str = "VmRSS") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _archived_ids(root: Path) -> set[str]:
    import pyarrow.parquet as pq

    ids: set[str] = set()
    for part in root.rglob("*.parquet"):
        if part.name.startswith("."):
            continue
        ids.update(pq.read_table(part, columns=["impression_id"]).column(0).to_pylist())
    return ids


def run_soak(
    *, seconds: float = 60.0, clients: int = 4, impressions: int = 20_000, flush_seconds: float = 5.0
) -> SoakResult:
    """Run the soak (see the module docstring) in a temporary folder and return its figures."""
    with tempfile.TemporaryDirectory(prefix="reloop-soak-") as tmp:
        data_dir = Path(tmp)
        env = _env(data_dir, flush_seconds)
        console.print(f"soak: preparing versions 1 and 2 in {data_dir} …")
        items = _prepare(data_dir, env, impressions)
        proc, port = _start_server(env, data_dir / "server.log")
        result = SoakResult(seconds=seconds, flush_seconds=flush_seconds)
        lock = threading.Lock()
        served_ids: set[str] = set()
        stop = threading.Event()
        peak = [0.0]

        def client(k: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            mine = items[k::clients]  # first pass: the log's own ids (the cycle joins on them)
            i = 0
            n = 0
            while not stop.is_set():
                size = BATCH_SIZES[n % len(BATCH_SIZES)]
                n += 1
                batch = []
                for j in range(i, i + size):
                    item, lap = mine[j % len(mine)], j // len(mine)
                    if lap:  # later passes: unique ids, so served and archived compare one to one
                        item = {**item, "impression_id": f"{item['impression_id']}#{lap}"}
                    batch.append(item)
                i += size
                try:
                    status, body = _call(port, "POST", "/v1/predict", {"items": batch}, conn=conn)
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    with lock:
                        result.requests += 1
                        result.errors += 1
                    continue
                with lock:
                    result.requests += 1
                    if status != 200:
                        result.errors += 1
                        result.status_5xx += status >= 500
                        continue
                    preds = body["predictions"]
                    result.served += len(preds)
                    result.versions[body["model_version"]] += len(preds)
                    served_ids.update(p["impression_id"] for p in preds)
            conn.close()

        def operator() -> None:
            started = time.monotonic()
            triggered = False
            step = 0
            while not stop.wait(4.0):
                step += 1
                if not triggered and time.monotonic() - started > seconds / 3:
                    triggered = True
                    day = (START + timedelta(days=2)).isoformat()
                    status, body = _call(port, "POST", "/v1/admin/cycles", {"date": day})
                    result.admin[f"cycle trigger {status}"] += 1
                    result.cycle = f"run {body.get('run_id')} started" if status == 202 else f"{status}"
                    continue
                if step % 3 == 0:
                    status, _ = _call(port, "POST", "/v1/admin/rollback", {"reason": "soak"})
                    result.admin[f"rollback {status}"] += 1
                else:
                    status, _ = _call(
                        port, "POST", "/v1/admin/promote", {"version": 1 + step % 2, "reason": "soak"}
                    )
                    result.admin[f"promote {status}"] += 1

        def monitor() -> None:
            while not stop.wait(0.25):
                peak[0] = max(peak[0], _rss_mb(proc.pid))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        threads += [threading.Thread(target=operator), threading.Thread(target=monitor)]
        console.print(f"soak: {seconds:g} s of traffic from {clients} clients on port {port} …")
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
        status, runs = _call(port, "GET", "/v1/admin/cycles")
        if status == 200 and runs["runs"]:
            latest = runs["runs"][0]
            if latest["cycle_date"] == (START + timedelta(days=2)).isoformat():
                result.cycle += f"; {latest['status']}, version {latest['produced_version']}"
                if latest.get("error"):
                    result.cycle += f": {latest['error'][:300]}"
        result.peak_rss_mb = max(peak[0], _rss_mb(proc.pid, "VmHWM"))
        os.kill(proc.pid, signal.SIGKILL)  # the unclean stop
        proc.wait()
        archived = _archived_ids(data_dir / "archive")
        result.archived = len(archived & served_ids)
        result.lost = len(served_ids - archived)
        return result


def print_result(result: SoakResult) -> None:
    from rich.table import Table

    table = Table(title="reloop bench soak")
    table.add_column("figure")
    table.add_column("value")
    for name, value in result.rows():
        table.add_row(name, value)
    console.print(table)
