"""README.md's "Everyday use" block, run literally as a new user would: one subprocess per line.

Twice: in a fresh folder with the default data folder (``./reloop-data``), and with
``RELOOP_DATA_DIR`` pointing elsewhere (nothing may land under the working folder but what a command
names, here ``model.ckpt``). Only the environment is test-specific: a small model, one thread, and
free ports for ``reloop serve`` and the scheduler's ``/metrics``; the two long-running commands
(``scheduler``, ``serve``) are started, checked healthy, and stopped with SIGTERM (exit 0).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.net import free_port
from tests.support.wait import wait_http_ok

ROOT = Path(__file__).resolve().parents[1]
LONG_RUNNING = {"scheduler": "scheduler_port", "serve": "api_port"}


def readme_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Everyday use") :]
    block = section[section.index("```bash\n") + len("```bash\n") : section.index("```\n", 10)]
    lines = []
    for raw in block.splitlines():
        line = raw.split("  #", 1)[0].strip()  # trailing comments
        if line:
            lines.append(line)
    return lines


def _env(tmp: Path, data_dir: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELOOP_")}
    bindir = str(Path(sys.executable).parent)  # the venv whose `reloop` script this test runs
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(
        {
            "RELOOP_EMBEDDING_DIM": "8",
            "RELOOP_MLP_HIDDEN": "[32, 16]",
            "RELOOP_BATCH_SIZE": "1024",
            "RELOOP_THREADS": "1",
            "RELOOP_CYCLE_ATTEMPTS": "1",
            "RELOOP_API_PORT": str(free_port()),
            "RELOOP_SCHEDULER_PORT": str(free_port()),
            "RELOOP_MAX_CATCHUP_DAYS": "1",
            "COLUMNS": "200",
        }
    )
    if data_dir is not None:
        env["RELOOP_DATA_DIR"] = str(data_dir)
    return env


def _run_long(line: str, cwd: Path, env: dict[str, str], url: str) -> None:
    proc = subprocess.Popen(
        ["bash", "-c", line],  # bash execs a single simple command: the signal reaches reloop
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        wait_http_ok(url, timeout=120, proc=proc)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # uvicorn re-raises the SIGTERM it handled once shutdown is complete: a clean stop either way
    clean = proc.returncode == 0 or (proc.returncode == -signal.SIGTERM and "shutdown complete" in output)
    assert clean, f"{line}: exit {proc.returncode}\n{output[-3000:]}"


def _run(line: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{line}: exit {res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    assert "Traceback" not in res.stderr, res.stderr
    return res


def test_the_block_is_what_this_test_runs() -> None:
    lines = readme_block()
    assert lines[0] == "reloop db upgrade" and any(re.search(r"\breloop scheduler$", x) for x in lines)
    assert all(shlex.split(x)[0].startswith(("reloop", "RELOOP_")) for x in lines)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["default data folder", "RELOOP_DATA_DIR elsewhere"])
def test_everyday_use_runs_as_written(tmp_path: Path, where: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    data = None if where == "default data folder" else tmp_path / "elsewhere" / "data"
    env = _env(tmp_path, data)
    expected_data = data if data is not None else work / "reloop-data"
    for line in readme_block():
        words = shlex.split(line)
        command = words[1] if words[0] == "reloop" else words[words.index("reloop") + 1]
        if command in LONG_RUNNING:
            port = env["RELOOP_SCHEDULER_PORT" if command == "scheduler" else "RELOOP_API_PORT"]
            path = "/healthz" if command == "scheduler" else "/readyz"
            _run_long(line, work, env, f"http://127.0.0.1:{port}{path}")
            continue
        res = _run(line, work, env)
        if command in ("simulate", "cycle", "train", "logs"):
            assert str(expected_data.resolve()) in res.stderr, (line, res.stderr)  # says where
    assert (expected_data / "registry.db").exists()
    assert len(list((expected_data / "logs").glob("dt=2024-05-0*"))) == 3
    assert (work / "model.ckpt").exists()
    if data is not None:  # nothing under the working folder but what a command named
        assert sorted(p.name for p in work.iterdir()) == ["model.ckpt"]
    runs = _run("reloop cycle runs --json", work, env).stdout
    assert runs.count('"status": "succeeded"') >= 3
