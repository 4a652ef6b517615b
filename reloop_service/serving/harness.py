"""The serving app run inside another program: the demo's real uvicorn, the replay's in-process client.

Both drive the app only through HTTP and two calls of this module: ``flush_archive()`` (what a
graceful shutdown does, so every scored row is on disk before a cycle reads the archive) and
``score(...)`` (impressions through ``POST /v1/predict`` in batches). Neither reaches into the
app's state. The cycle trigger is injected like in ``reloop serve`` (``create_app(cycle_trigger=)``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from reloop_service.config import Settings
from reloop_service.serving.state import CycleTrigger


class HarnessError(RuntimeError):
    """The app cannot start, or answered something else than a prediction (the message says what)."""


def score(
    client: Any,
    impressions: Sequence[dict[str, Any]],
    *,
    features: tuple[str, ...],
    max_batch: int,
    collect: list[dict[str, Any]] | None = None,
) -> tuple[int, int | None]:
    """Score impressions through ``POST /v1/predict`` in batches; returns (rows scored, version).

    ``client`` is an httpx or Starlette test client. ``collect`` receives every answered
    ``{"impression_id", "ctr"}`` in order (the replay keeps them).
    """
    version = None
    scored = 0
    for start in range(0, len(impressions), max_batch):
        chunk = impressions[start : start + max_batch]
        body = {
            "items": [
                {"impression_id": row["impression_id"], "features": {k: row.get(k) for k in features}}
                for row in chunk
            ]
        }
        resp = client.post("/v1/predict", json=body)
        if resp.status_code != 200:
            raise HarnessError(f"POST /v1/predict answered {resp.status_code}: {resp.text[:300]}")
        payload = resp.json()
        version = payload["model_version"]
        if collect is not None:
            collect.extend(payload["predictions"])
        scored += len(payload["predictions"]) if "predictions" in payload else len(chunk)
    return scored, version


class LocalServer:
    """The serving app under a real uvicorn on 127.0.0.1, in a thread of this process.

    Running it in-process lets the caller flush the app's prediction archive before each cycle
    without waiting for the flush interval.
    """

    def __init__(self, settings: Settings, port: int, *, cycle_trigger: CycleTrigger | None = None) -> None:
        import uvicorn

        from reloop_service.serving.app import create_app

        self.app = create_app(settings, cycle_trigger=cycle_trigger)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="reloop-local-api", daemon=True)

    def start(self, timeout_s: float = 30.0) -> int:
        """Start serving; returns the bound port."""
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise HarnessError(
                    f"the API did not start on 127.0.0.1:{self.server.config.port} (port in use? pass --port)"
                )
            time.sleep(0.05)
        sock = self.server.servers[0].sockets[0]
        return int(sock.getsockname()[1])

    def flush_archive(self) -> int:
        """Write what the archive buffers now; returns the rows it has written in total."""
        from reloop_service.serving.app import flush_archive

        return flush_archive(self.app)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def wait(self) -> None:
        """Serve until Ctrl-C or SIGTERM, then stop gracefully (the app's shutdown flushes the archive).

        uvicorn installs no signal handlers when it runs in a thread, so this does it.
        """
        import signal

        stop = threading.Event()

        def _on_signal(_signum: int, _frame: Any) -> None:
            stop.set()

        previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while self.thread.is_alive() and not stop.wait(0.5):
                pass
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class InProcessService:
    """The serving app behind Starlette's test client (no socket): ``client`` and ``flush_archive()``."""

    def __init__(self, client: Any, app: Any) -> None:
        self.client = client
        self._app = app

    def flush_archive(self) -> int:
        """Write what the archive buffers now; returns the rows it has written in total."""
        from reloop_service.serving.app import flush_archive

        return flush_archive(self._app)


@contextmanager
def in_process(
    settings: Settings, *, cycle_trigger: CycleTrigger | None = None
) -> Iterator[InProcessService]:
    """The app with its lifespan running (model watcher, archive), for one ``with`` block."""
    from fastapi.testclient import TestClient

    from reloop_service.serving.app import create_app

    app = create_app(settings, cycle_trigger=cycle_trigger)
    with TestClient(app) as client:
        yield InProcessService(client, app)
