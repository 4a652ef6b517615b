"""Dashboard fixtures: demo registry, a real ``reloop serve`` on 127.0.0.1, Debian's headless Chromium.

Nothing downloads a browser: Playwright drives ``/usr/bin/chromium``. Without it the browser tests
skip locally and fail under ``CI=true`` (``scripts/test.sh`` installs the package).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from reloop_service.clitools import serve_argv
from reloop_service.config import Settings
from tests.support.net import free_port
from tests.support.wait import wait_http_ok

from .seed_registry import Demo, build_demo

torch.set_num_threads(1)

TOKEN = "dashboard-test-token-6f1c"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
VIEWPORT = {"width": 1366, "height": 900}  # a laptop screen


@dataclass
class Server:
    """A running ``reloop serve`` with the demo registry."""

    url: str
    demo: Demo
    log_path: Path
    proc: subprocess.Popen[bytes]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def admin(self, path: str) -> Any:
        resp = httpx.get(f"{self.url}{path}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def production(self) -> int | None:
        value: int | None = self.admin("/v1/admin/versions")["production_version"]
        return value


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A demo registry (v5 in production, v4 before it) served by a real uvicorn, one per module.

    Starting the service costs seconds (torch import), so tests share it: a test that moves
    production puts it back before it ends.
    """
    tmp_path = tmp_path_factory.mktemp("dashboard")
    data_dir = tmp_path / "data"
    db_url = f"sqlite:///{data_dir / 'registry.db'}"
    demo = build_demo(Settings().rooted_at(data_dir))
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RELOOP_")},
        "RELOOP_DATA_DIR": str(data_dir),
        "RELOOP_DATABASE_URL": db_url,
        "RELOOP_ARTIFACTS_URI": str(data_dir / "artifacts"),
        "RELOOP_ADMIN_TOKEN": TOKEN,
        "RELOOP_WATCH_INTERVAL_S": "0.2",
        "RELOOP_THREADS": "1",
        "RELOOP_ARCHIVE_FLUSH_SECONDS": "0.5",
        "RELOOP_CYCLE_ATTEMPTS": "1",
        "RELOOP_HEARTBEAT_S": "1",
    }
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as fh:
        proc = subprocess.Popen(
            serve_argv(port),
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/readyz", timeout=60, proc=proc, log=log_path.read_text)
        yield Server(url=url, demo=demo, log_path=log_path, proc=proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium under Playwright (never a downloaded browser)."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: install Debian's chromium package (scripts/test.sh does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true: browser tests must run)")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class PageWatch:
    """A page plus everything it complained about."""

    page: Any
    console_errors: list[str]
    page_errors: list[str]
    requests: list[str]

    def shot(self, name: str, *, full_page: bool = True) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path


@pytest.fixture
def page(browser: Any) -> Iterator[PageWatch]:
    """A fresh browser context (its own sessionStorage) and page, recording errors and requests."""
    context = browser.new_context(viewport=VIEWPORT, service_workers="block")
    pg = context.new_page()
    pg.set_default_timeout(15000)
    watch = PageWatch(pg, [], [], [])
    pg.on("console", lambda msg: watch.console_errors.append(msg.text) if msg.type == "error" else None)
    pg.on("pageerror", lambda exc: watch.page_errors.append(str(exc)))
    pg.on("request", lambda req: watch.requests.append(req.url))
    try:
        yield watch
    finally:
        context.close()
