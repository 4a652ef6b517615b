"""Network helpers shared by the tests that start real servers."""

from __future__ import annotations

import os
import socket


def _worker() -> tuple[int, int]:
    """(index, count) of this pytest-xdist worker; (0, 1) outside xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    return (int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else 0), max(1, count)


def _owner(port: int, count: int) -> int:
    # Linux hands bind(0) ports of one parity (odd) while it can, so `port % count` would starve a
    # worker: mix the bits first (Knuth's multiplicative hash).
    return ((port * 2654435761) % 2**32 >> 16) % count


def free_port() -> int:
    """A TCP port nobody listens on right now on 127.0.0.1 (the OS picks it).

    Under pytest-xdist, worker k of n only takes ports that ``_owner`` gives to k, so two workers are
    never handed the same port between one's pick and its server's bind.
    """
    index, count = _worker()
    for _ in range(10_000):  # each try keeps a port with probability 1/count
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if _owner(port, count) == index:
            return port
    raise RuntimeError(f"no free port for xdist worker {index} of {count} in 10,000 tries")
