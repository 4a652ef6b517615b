"""``reloop serve`` as a real subprocess: the one command line the serving, scale-out, dashboard and fault
tests start (each adds its own environment, log file and readiness wait)."""

from __future__ import annotations

import sys


def reloop_serve_argv(port: int, *args: str) -> list[str]:
    """``python -m reloop_service.cli serve`` on 127.0.0.1:``port``, with extra CLI ``args``."""
    return [
        sys.executable,
        "-m",
        "reloop_service.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *args,
    ]
