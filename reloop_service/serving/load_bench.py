"""``reloop bench serve``: a real server with a demo model, loaded from a separate process.

Measures, on this machine: single-item latency at a fixed request rate, batch-100 throughput
with a few concurrent connections, each with the archive on and off, and the bare model on the
same batches (forward alone, and transform + forward) as the ceiling. Load generation uses
``http.client`` with keep-alive (cheap per request) in its own process, sharing the cores.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import random
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np

from reloop_service.clitools import console, serve_argv
from reloop_service.data.archive import FLUSHER_THREAD


# --- demo model -------------------------------------------------------------------------------------
def _demo_spec() -> Any:
    from reloop_service.data.spec import default_spec

    spec = default_spec()
    return spec.with_numeric_stats({f.name: (1.0, 1.0) for f in spec.numeric})


def demo_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Feature dicts shaped like the demo spec's (every field present)."""
    spec = _demo_spec()
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        rec: dict[str, Any] = {f.name: f"{f.name}-{rng.randrange(5000)}" for f in spec.categorical}
        rec.update({f.name: round(rng.random() * 100, 3) for f in spec.numeric})
        rec.update(
            {
                m.name: [f"t{rng.randrange(500)}" for _ in range(rng.randrange(1, m.max_len + 1))]
                for m in spec.multi
            }
        )
        out.append(rec)
    return out


def _setup_registry(data_dir: Path) -> None:
    import torch

    from reloop_service.config import Settings
    from reloop_service.registry import store
    from reloop_service.registry.artifacts import ArtifactStore
    from reloop_service.registry.db import make_engine, run_transaction, upgrade
    from reloop_service.training.checkpoint import Checkpoint, checkpoint_to_bytes
    from reloop_service.training.models import build_model

    settings = Settings(data_dir=data_dir)
    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    spec = _demo_spec()
    torch.manual_seed(0)
    model = build_model(
        settings.model, spec, embedding_dim=settings.embedding_dim, hidden=list(settings.mlp_hidden)
    )
    ckpt = Checkpoint(
        model_name=settings.model,
        model_args=model.model_args,
        state_dict=model.state_dict(),
        spec=spec.to_dict(),
        loss="bce",
        loss_params={},
        seed=0,
        first_day=date(2024, 1, 1),
        last_day=date(2024, 1, 1),
    )
    ref = ArtifactStore(settings.resolved_artifacts_uri).put(checkpoint_to_bytes(ckpt), "bench.pt")
    mv = store.register_version_with_retry(
        engine, model_name=settings.model_name, artifact=ref, actor="bench", reason="bench demo model"
    )
    run_transaction(
        engine,
        lambda s: store.promote(
            s,
            model_name=settings.model_name,
            version=mv.version,
            actor="bench",
            reason="bench",
            expected_current=None,
        ),
    )
    engine.dispose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(data_dir: Path, archive: bool | None, workers: int = 1) -> tuple[subprocess.Popen[bytes], int]:
    """``reloop serve`` (``archive`` True/False) or, for ``archive=None``, the bare FastAPI floor."""
    port = _free_port()
    env = {
        **os.environ,
        "RELOOP_DATA_DIR": str(data_dir),
        "RELOOP_ARCHIVE_ENABLED": "true" if archive else "false",
        "RELOOP_THREADS": "1",
        "RELOOP_ARCHIVE_URI": str(data_dir / f"archive-{port}"),
    }
    if archive is None:
        # The floor: the same uvicorn (httptools, uvloop when installed, no access log) and FastAPI,
        # one POST route that answers a constant.
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "reloop_service.serving.load_bench:floor_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        ready = "/healthz"
    else:
        cmd = serve_argv(port, *(["--workers", str(workers)] if workers > 1 else []))
        ready = "/readyz"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", ready)
            first = conn.getresponse()
            first.read()
            if first.status == 200:
                if workers > 1:  # every worker up: wait until the metrics show each one's model
                    conn.request("GET", "/metrics")
                    text = conn.getresponse().read().decode()
                    if text.count("reloop_model_info{") < workers:
                        time.sleep(0.2)
                        continue
                return proc, port
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("bench server did not become ready")


def _floor() -> Any:
    """The bare FastAPI app of the floor measurement (imported by uvicorn in its own process)."""
    from fastapi import FastAPI, Response

    app = FastAPI()
    body = b'{"model_version":1,"predictions":[{"impression_id":"x","ctr":0.5}]}'

    @app.post("/v1/predict")
    async def predict() -> Response:
        return Response(body, media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return app


def __getattr__(name: str) -> Any:  # ``floor_app`` is built on first import by uvicorn only
    if name == "floor_app":
        return _floor()
    raise AttributeError(name)


# --- load generator (runs in its own process) -----------------------------------------------------
def _post(conn: http.client.HTTPConnection, body: bytes) -> float:
    t0 = time.perf_counter()
    conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}")
    return time.perf_counter() - t0


def _summary(lat: list[float], items: int, wall: float) -> dict[str, float]:
    a = np.asarray(lat) * 1000
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)),
        "req_per_s": len(lat) / wall,
        "pred_per_s": items / wall,
    }


def load_main(port: int, requests: int, rate: float, concurrency: int, mode: str) -> dict[str, Any]:
    """One run against a server: ``single`` items at ``rate`` req/s, or ``batch100`` at full speed."""
    singles = [json.dumps({"items": [{"features": r}]}).encode() for r in demo_records(200, seed=1)]
    batches = [
        json.dumps({"items": [{"features": r} for r in demo_records(100, seed=s)]}).encode() for s in range(8)
    ]
    conn = http.client.HTTPConnection("127.0.0.1", port)
    for b in singles[:50]:  # warm up
        _post(conn, b)
    if mode == "batch100":
        return _batch_run(port, batches, requests, concurrency)
    lat: list[float] = []
    t0 = time.perf_counter()
    for i in range(requests):
        due = t0 + i / rate
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        lat.append(_post(conn, singles[i % len(singles)]))
    return _summary(lat, requests, time.perf_counter() - t0)


def _batch_run(port: int, batches: list[bytes], requests: int, concurrency: int) -> dict[str, Any]:
    per_thread = max(1, requests // (2 * concurrency))
    lats: list[list[float]] = [[] for _ in range(concurrency)]

    def worker(k: int) -> None:
        c = http.client.HTTPConnection("127.0.0.1", port)
        _post(c, batches[k % len(batches)])
        for i in range(per_thread):
            lats[k].append(_post(c, batches[(i + k) % len(batches)]))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    flat = [x for part in lats for x in part]
    return _summary(flat, len(flat) * 100, wall)


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its live children (Linux): the server's CPU, workers included."""
    total = 0.0
    for p in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            if p == pid:
                return float("nan")
    return total


def _thread_cpu_seconds(pid: int, name: str) -> float:
    """utime + stime of the threads called ``name`` in a process and its children (Linux)."""
    total = 0.0
    for p in [pid, *_children(pid)]:
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                if (task / "comm").read_text().strip() != name:
                    continue
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, IndexError, ValueError):
                continue
    return total


def _children(pid: int) -> list[int]:
    """Every descendant pid (uvicorn's worker processes)."""
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            kids = [int(k) for k in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
        for kid in kids:
            out += [kid, *_children(kid)]
    return out


# --- bare model --------------------------------------------------------------------------------------
def _cpu_us(fn: Any, reps: int) -> float:
    """Best of 3 mean thread CPU time of ``fn`` in µs (contention inflates wall time, much less CPU)."""
    for _ in range(max(3, reps // 20)):
        fn()
    best = float("inf")
    for _ in range(3):
        t0 = time.thread_time()
        for _ in range(reps):
            fn()
        best = min(best, (time.thread_time() - t0) / reps)
    return best * 1e6


def _cpu_breakdown(
    predictor: Any, recs: list[dict[str, Any]], body: bytes, fb: Any, k: int
) -> dict[str, float]:
    """Thread CPU µs per request of each serving step on one batch."""
    from reloop_service.data import transforms
    from reloop_service.serving.schemas import PredictLimits, parse_predict_body

    spec = predictor.spec

    def cold() -> None:
        with transforms._hash_cache_lock:
            transforms._hash_cache.clear()
            transforms._hash_cache[None] = 0
        transforms.transform_records(spec, recs)

    return {
        "cpu_parse_us": _cpu_us(lambda: parse_predict_body(body, limits=PredictLimits()), k),
        "cpu_arrow_path_us": _cpu_us(
            lambda: transforms.transform(spec, transforms.records_to_batch(spec, recs)), k
        ),
        "cpu_records_hot_us": _cpu_us(lambda: transforms.transform_records(spec, recs), k),
        "cpu_records_cold_us": _cpu_us(cold, k),
        "cpu_forward_us": _cpu_us(lambda: predictor.predict_features(fb), k),
    }


def _bare(data_dir: Path) -> dict[str, dict[str, float]]:
    import torch

    from reloop_service.data import transforms
    from reloop_service.training.checkpoint import checkpoint_from_bytes
    from reloop_service.training.predict import Predictor

    torch.set_num_threads(1)
    path = next((data_dir / "artifacts").rglob("bench.pt"))  # the server loads it through the store
    predictor = Predictor(checkpoint_from_bytes(path.read_bytes()))
    spec = predictor.spec

    out: dict[str, dict[str, float]] = {}
    for size in (1, 100):
        recs = demo_records(size, seed=3)
        body = json.dumps({"items": [{"features": r} for r in recs]}).encode()
        fb = transforms.transform(spec, transforms.records_to_batch(spec, recs))
        reps = 2000 if size == 1 else 400
        with torch.inference_mode():
            for _ in range(20):
                predictor.model(fb)
            t0 = time.perf_counter()
            for _ in range(reps):
                predictor.model(fb)
            fwd = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(reps // 2):
            predictor.predict_records(recs)
        full = time.perf_counter() - t0
        k = reps // 4
        out[f"batch{size}"] = {
            "forward_pred_per_s": size * reps / fwd,
            "transform_forward_pred_per_s": size * (reps // 2) / full,
            **_cpu_breakdown(predictor, recs, body, fb, k),
        }
    return out


def _archived_rows(port: int) -> float:
    """``reloop_archive_rows_written_total`` from ``/metrics``: every worker's rows written so far."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("reloop_archive_rows_written_total")
    )


def _await_archived(port: int, rows: float, timeout: float) -> bool:
    """Poll ``/metrics`` until the archive has written ``rows`` rows; False when ``timeout`` passes.

    The last rows of a run wait for the flusher's timer (``RELOOP_ARCHIVE_FLUSH_SECONDS``), and with
    several workers each worker's count reaches the shared metrics at its next registry poll.
    """
    deadline = time.monotonic() + timeout
    while _archived_rows(port) < rows:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _measure(
    proc: subprocess.Popen[bytes],
    port: int,
    mode: str,
    *,
    requests: int,
    rate: float,
    concurrency: int,
    archive: bool = False,
) -> dict[str, Any]:
    """One load run against a started server; adds the server's CPU per prediction and per request.

    With the archive on, the run's rows are written before its CPU is counted: the server's CPU
    until the load ends plus the flusher's until the last of the run's rows is written. Counting
    only until the load ended took in whichever flushes fell inside the window (one or two of the
    batch run's two 50,000-row parts, and sometimes the previous run's rest): the flusher's figure
    moved between 0.5 and 0.8 µs a prediction from run to run.
    """
    written0 = _archived_rows(port) if archive else 0.0
    cpu0 = _cpu_seconds(proc.pid)
    flusher0 = _thread_cpu_seconds(proc.pid, FLUSHER_THREAD)
    loader = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json; from reloop_service.serving.load_bench import load_main; "
            f"args = ({port}, {requests}, {rate}, {concurrency}, {mode!r}); "
            "print(json.dumps(load_main(*args)))",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    run: dict[str, Any] = json.loads(loader.stdout.strip().splitlines()[-1])
    per_thread = max(1, requests // (2 * concurrency))
    reqs = requests if mode == "single" else (per_thread + 1) * concurrency
    preds = requests if mode == "single" else reqs * 100
    cpu = _cpu_seconds(proc.pid) - cpu0
    flusher = _thread_cpu_seconds(proc.pid, FLUSHER_THREAD)
    if archive:
        run["archive_drained"] = _await_archived(port, written0 + preds + 50, timeout=60.0)
        drained = _thread_cpu_seconds(proc.pid, FLUSHER_THREAD)
        cpu += drained - flusher
        flusher = drained
    run["archive_thread_cpu_us_per_pred"] = (flusher - flusher0) * 1e6 / (preds + 50)
    # + the 50 single-item warm-up requests of every run
    run["server_cpu_us_per_pred"] = cpu * 1e6 / (preds + 50)
    run["server_cpu_us_per_req"] = cpu * 1e6 / (reqs + 50)
    return run


class BenchDirError(ValueError):
    """The bench's ``--data-dir`` cannot be used (the message names it and says why)."""


def check_bench_dir(path: Path) -> None:
    """Refuse a folder that holds anything: the bench registers and promotes its own demo model there.

    Pointed at a service's data folder it would replace that service's production model, and a
    second run into its own folder would find a production version it did not expect.
    """
    if path.exists() and not path.is_dir():
        raise BenchDirError(f"--data-dir {path}: not a folder")
    if path.is_dir() and any(path.iterdir()):
        raise BenchDirError(
            f"--data-dir {path}: not empty; the bench writes its own registry, demo model and archive "
            "there (give a new or empty folder, or leave --data-dir out for a temporary one)"
        )


def run_bench(
    *,
    requests: int,
    rate: float,
    concurrency: int,
    output: str | None,
    data_dir: Path | None,
    workers: int = 2,
) -> None:
    """Run every configuration and print (and optionally append) the figures.

    Configurations, one server at a time: the bare-FastAPI floor (single items), ``reloop serve``
    with the archive off and on (single items, batches of 100) and, when ``workers`` > 1, with
    ``--workers`` (batches of 100, archive on). Server CPU is read from /proc for the server's
    process tree, so it does not depend on how the cores were shared.
    """
    if data_dir is not None:
        check_bench_dir(Path(data_dir))
    load_start = os.getloadavg()[0]
    measure = {"requests": requests, "rate": rate, "concurrency": concurrency}
    with tempfile.TemporaryDirectory(prefix="reloop-bench-") as tmp:
        root = Path(data_dir) if data_dir else Path(tmp)
        _setup_registry(root)
        results: dict[str, Any] = {"bare": _bare(root)}
        plan: list[tuple[str, bool | None, int, tuple[str, ...]]] = [
            ("floor", None, 1, ("single",)),
            ("archive_off", False, 1, ("single", "batch100")),
            ("archive_on", True, 1, ("single", "batch100")),
        ]
        if workers > 1:
            plan.append(("workers", True, workers, ("batch100",)))
        for key, archive, n, modes in plan:
            proc, port = _start(root, archive, n)
            try:
                results[key] = {
                    mode: _measure(proc, port, mode, archive=bool(archive), **measure)  # type: ignore[arg-type]
                    for mode in modes
                }
            finally:
                proc.terminate()
                proc.wait(timeout=60)
    results["load_start"] = load_start
    results["workers_n"] = workers
    text = _render(results, requests=requests, rate=rate, concurrency=concurrency)
    console.print(text, markup=False, highlight=False)
    if output:
        path = Path(output)
        existing = path.read_text() if path.exists() else "# Benchmarks\n"
        path.write_text(existing.rstrip() + "\n\n" + text)


def _render(r: dict[str, Any], *, requests: int, rate: float, concurrency: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cmd = f"reloop bench serve --requests {requests} --rate {rate:g} --concurrency {concurrency}"
    lines = [
        "## Serving",
        "",
        f"Command: `{cmd}` ({datetime.now(UTC):%Y-%m-%d}). Machine: {cpu}, {os.cpu_count()} cores "
        f"(server, load generator and everything else share them), Python {platform.python_version()}, "
        "one uvicorn process (httptools, uvloop), torch 1 thread, default DNN on the demo spec.",
        "",
        f"Single item: one keep-alive connection paced at {rate:g} req/s. "
        f"Batch of 100: {concurrency} connections back to back.",
        "",
        f"Load average (1 min) at the start: {r['load_start']:.1f}, at the end: "
        f"{os.getloadavg()[0]:.1f} (other work on the same cores inflates "
        "wall-clock figures; server CPU time per prediction less so, but it is inflated too).",
        "",
        "| run | archive | p50 ms | p95 ms | p99 ms | req/s | predictions/s | server CPU µs/prediction |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows: list[tuple[str, str, str, str]] = [("floor", "single", "1 item", "bare FastAPI")]
    for key, label in (("archive_off", "off"), ("archive_on", "on")):
        rows += [(key, "single", "1 item", label), (key, "batch100", "100 items", label)]
    if "workers" in r and isinstance(r["workers"], dict):
        rows.append(("workers", "batch100", f"100 items, --workers {r['workers_n']}", "on"))
    for key, run, name, label in rows:
        s = r[key][run]
        lines.append(
            f"| {name} | {label} | {s['p50_ms']:.2f} | {s['p95_ms']:.2f} | {s['p99_ms']:.2f} "
            f"| {s['req_per_s']:.0f} | {s['pred_per_s']:.0f} | {s['server_cpu_us_per_pred']:.1f} |"
        )
    floor = r["floor"]["single"]["server_cpu_us_per_req"]
    fl_b = r["archive_on"]["batch100"].get("archive_thread_cpu_us_per_pred", float("nan"))
    fl_s = r["archive_on"]["single"].get("archive_thread_cpu_us_per_pred", float("nan"))
    drained = all(
        run.get("archive_drained", True)
        for key in ("archive_on", "workers")
        if isinstance(r.get(key), dict)
        for run in r[key].values()
    )
    single_on = r["archive_on"]["single"]["server_cpu_us_per_req"]
    single_off = r["archive_off"]["single"]["server_cpu_us_per_req"]
    b_on = r["archive_on"]["batch100"]["server_cpu_us_per_pred"]
    b_off = r["archive_off"]["batch100"]["server_cpu_us_per_pred"]
    off, on = r["archive_off"]["batch100"]["pred_per_s"], r["archive_on"]["batch100"]["pred_per_s"]
    lines += [
        "",
        f"Server CPU per single-item request (archive on): {single_on:.0f} µs; the bare-FastAPI floor in "
        f"the same run: {floor:.0f} µs; above the floor: {single_on - floor:.0f} µs (target <= 300).",
        f"Server CPU per prediction at batch 100 (archive on): {b_on:.1f} µs (target <= 10); archive off: "
        f"{b_off:.1f} µs.",
        f"Archive share of server CPU: batch 100 {100 * (b_on - b_off) / b_on:.1f}%, single item "
        f"{100 * (single_on - single_off) / single_on:.1f}% (target <= 10%; CPU, not throughput: "
        f"the throughput difference, {100 * (1 - on / off):.1f}%, is mostly noise here).",
        f"Archive flusher thread (its own CPU time, from /proc): batch 100 {fl_b:.2f} µs a prediction, "
        f"{100 * fl_b / b_on:.1f}% of server CPU; single item {fl_s:.1f} µs a request, "
        f"{100 * fl_s / single_on:.1f}% (the request path's share, the append, is not in it). With the "
        "archive on, a run's CPU includes the flusher's until every row of the run is written"
        + ("" if drained else " (in this run a wait timed out: part of the flusher's work is missing)")
        + ".",
        "",
        "Ceiling, same batches in-process (1 thread): wall-clock predictions/s of the bare forward",
        "and of `Predictor.predict_records` (records -> tensors via `transform_records`, then forward);",
        "thread CPU µs per request of each step (best of 3; hash memo hot, as for repeated ids, and cold).",
        "",
        "| batch | forward only, predictions/s | transform + forward, predictions/s "
        "| CPU µs: parse | Arrow path (records_to_batch + transform) | transform_records hot | cold "
        "| forward |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size in (1, 100):
        b = r["bare"][f"batch{size}"]
        lines.append(
            f"| {size} | {b['forward_pred_per_s']:.0f} | {b['transform_forward_pred_per_s']:.0f} "
            f"| {b['cpu_parse_us']:.0f} | {b['cpu_arrow_path_us']:.0f} | {b['cpu_records_hot_us']:.0f} "
            f"| {b['cpu_records_cold_us']:.0f} | {b['cpu_forward_us']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(shlex.join(sys.argv))
