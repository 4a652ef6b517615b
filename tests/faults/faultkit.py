"""Real processes for the fault suite: ``reloop serve`` and ``reloop`` CLI subprocesses, a throwaway
PostgreSQL cluster the test owns (so it can freeze it with SIGSTOP), tiny real checkpoints in a real
artifact store, and a wait helper that polls a condition with a deadline.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import httpx
import torch

from reloop_service.clitools import reloop_argv
from reloop_service.registry import store
from reloop_service.registry.artifacts import ArtifactStore
from reloop_service.registry.db import make_engine, run_transaction, session_scope, upgrade
from reloop_service.training.checkpoint import Checkpoint, checkpoint_to_bytes
from reloop_service.training.models import build_model
from tests.support.net import free_port
from tests.support.specs import SERVING_SPEC
from tests.support.wait import wait_for

T = TypeVar("T")
TOKEN = "fault-suite-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SPEC = dataclasses.replace(SERVING_SPEC, multi=())  # no tag list: the fault tests' items carry none
ITEMS = [{"features": {"site": f"s{i % 17}", "device": "ios", "price": 1.0 + i}} for i in range(200)]


# --------------------------------------------------------------------------------- registry + data
def checkpoint_bytes(seed: int) -> bytes:
    torch.manual_seed(seed)
    model = build_model("dnn", SPEC, embedding_dim=4, hidden=[8])
    return checkpoint_to_bytes(
        Checkpoint(
            model_name="dnn",
            model_args=model.model_args,
            state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
            spec=SPEC.to_dict(),
            loss="bce",
            loss_params={},
            seed=seed,
            first_day=date(2024, 5, 1),
            last_day=date(2024, 5, 2),
        )
    )


@dataclass
class Registry:
    """The test's own handle on the registry and artifact store a server or CLI process uses."""

    url: str
    data_dir: Path

    def __post_init__(self) -> None:
        upgrade(self.url)
        self.engine = make_engine(self.url)
        self.artifacts = ArtifactStore(str(self.data_dir / "artifacts"))

    def add_version(self, seed: int, *, data: bytes | None = None) -> int:
        ref = self.artifacts.put(data if data is not None else checkpoint_bytes(seed), f"model-{seed}.pt")
        return store.register_version_with_retry(
            self.engine, model_name="ctr", artifact=ref, actor="test", reason=f"seed {seed}"
        ).version

    def artifact_path(self, version: int) -> Path:
        with session_scope(self.engine, readonly=True) as session:
            return Path(store.get_version(session, model_name="ctr", version=version).artifact.uri)

    def production(self) -> int | None:
        with session_scope(self.engine, readonly=True) as session:
            prod = store.get_production(session, model_name="ctr")
        return prod.version.version if prod else None

    def promote(self, version: int) -> None:
        run_transaction(
            self.engine,
            lambda s: store.promote(
                s,
                model_name="ctr",
                version=version,
                actor="test",
                reason="setup",
                expected_current=None,
                unconditional=True,
            ),
        )

    def promoted_events(self) -> list[tuple[int | None, int | None]]:
        with session_scope(self.engine, readonly=True) as session:
            events = store.list_events(session, model_name="ctr", kinds=["promoted"], limit=10_000)
        return [(e.from_version, e.to_version) for e in reversed(events)]

    def close(self) -> None:
        self.engine.dispose()


def flip_bytes(path: Path, count: int = 3) -> None:
    """Flip ``count`` bytes in the middle of a file on disk (what bit rot or a bad copy does)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(count):
        data[middle + 7 * i] ^= 0xFF
    path.write_bytes(bytes(data))


# ----------------------------------------------------------------------------------------- cycles
def cycle_env(tmp: Path, db_url: str, **settings: Any) -> dict[str, str]:
    """Environment of ``reloop cycle run`` on generated click logs under ``tmp`` (tiny model, fast claims)."""
    from tests.cycle.cycle_data import SPEC_TOML

    spec = tmp / "spec.toml"
    spec.write_text(SPEC_TOML)
    values: dict[str, Any] = {
        "spec_path": spec,
        "embedding_dim": 8,
        "mlp_hidden": "[32,16]",
        "batch_size": 256,
        "cycle_attempts": 1,
        "heartbeat_s": 0.3,
        "stale_after_s": 2.0,
        "gate_max_auc_drop": 0.5,
        "gate_max_logloss_rise": 0.5,
        "report_history_plot": "false",
    }
    values.update(settings)
    return reloop_env(tmp / "data", db_url, **values)


def write_days(tmp: Path, days: list[date], rows: int = 3000) -> None:
    from tests.cycle.cycle_data import write_day

    for day in days:
        write_day(tmp / "data" / "logs", day, rows)


# ---------------------------------------------------------------------------------------- processes
def reloop_env(data_dir: Path, db_url: str, **settings: Any) -> dict[str, str]:
    """The environment of a ``reloop`` subprocess: ``RELOOP_<NAME>`` for each keyword."""
    env = {
        **os.environ,
        "RELOOP_DATA_DIR": str(data_dir),
        "RELOOP_DATABASE_URL": db_url,
        "RELOOP_ADMIN_TOKEN": TOKEN,
        "RELOOP_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    env.update({f"RELOOP_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def reloop(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        reloop_argv(*args),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def spawn(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    fh = log.open("wb")
    return subprocess.Popen(reloop_argv(*args), env=env, stdout=fh, stderr=subprocess.STDOUT)


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=kw.pop("timeout", 5), **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.post(self.url + path, timeout=kw.pop("timeout", 10), **kw)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(env: dict[str, str], log_dir: Path, *, ready: bool = True) -> Server:
    """``reloop serve`` on a free port; waits for ``/readyz`` 200 (or any answer with ``ready=False``)."""
    port = free_port()
    log = log_dir / f"server-{port}.log"
    proc = spawn("serve", "--host", "127.0.0.1", "--port", str(port), env=env, log=log)
    server = Server(proc, f"http://127.0.0.1:{port}", log)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}:\n{server.log()}")
        code = server.get("/readyz", timeout=2).status_code
        return code == 200 or not ready

    try:
        wait_for(up, timeout=90, what="reloop serve to answer /readyz")
    except BaseException:
        server.stop()
        raise
    return server


@contextmanager
def serving(env: dict[str, str], log_dir: Path, *, ready: bool = True) -> Iterator[Server]:
    server = start_server(env, log_dir, ready=ready)
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------------- a PostgreSQL of our own
def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class PgCluster:
    """A throwaway PostgreSQL cluster in a temporary folder on a free port, owned by the test.

    Run as the ``postgres`` user when the test runs as root (PostgreSQL refuses root). ``freeze`` stops
    the postmaster and every backend with SIGSTOP, the way a stuck VM or a paused container looks to
    clients: connections stay open, nothing answers.
    """

    def __init__(self) -> None:
        bin_dir = _pg_bin()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin")
        self.bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="reloop-pg-"))
        self.port = free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self.data = self.dir / "data"
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.dir / "server.log"),
            "-w",
            "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self._as, str(self.bin / tool), *args], capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stdout}\n{done.stderr}")

    def pids(self) -> list[int]:
        postmaster = int((self.data / "postmaster.pid").read_text().splitlines()[0])
        children = []
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                children.append(int(Path(stat).parent.name))
        return [postmaster, *children]

    def freeze(self) -> None:
        for pid in self.pids():
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in reversed(self.pids()):
            os.kill(pid, signal.SIGCONT)

    def stop(self) -> None:
        with suppress(OSError, ValueError, IndexError):
            self.thaw()
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
