"""Waiting on a real condition instead of sleeping a guessed time.

``wait_for`` polls a condition (a server answering, a row reaching a status, a file appearing) until it
holds and fails naming what it waited for once the deadline passes. The deadline is a bound on a hang,
never a measurement: a slow machine only waits longer.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

T = TypeVar("T")


def wait_for(condition: Callable[[], T], *, timeout: float, what: str, every: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy (returned); fail naming ``what`` past ``timeout``.

    Transport errors count as "not yet" (a server still starting); any other exception propagates.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = condition()
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(every)


def wait_http_ok(
    url: str,
    *,
    timeout: float,
    proc: subprocess.Popen[Any] | None = None,
    log: Callable[[], str] | None = None,
    client: httpx.Client | None = None,
) -> None:
    """Wait until ``GET url`` answers 200; fail at once (with the log) if ``proc`` exits meanwhile."""

    def ok() -> bool:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{proc.args!r} exited {proc.returncode}:\n{log() if log else ''}")
        response = client.get(url) if client is not None else httpx.get(url, timeout=2)
        return response.status_code == 200

    try:
        wait_for(ok, timeout=timeout, what=f"{url} to answer 200")
    except AssertionError as exc:
        if log is None or "exited" in str(exc):
            raise
        raise AssertionError(f"{exc}\n{log()}") from None
