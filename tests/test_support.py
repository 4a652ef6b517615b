"""The shared test helpers that keep parallel pytest-xdist workers apart."""

from __future__ import annotations

import pytest

from tests.support.net import _owner, free_port


@pytest.mark.parametrize("count", [2, 3])
def test_free_port_gives_each_xdist_worker_its_own_ports(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    seen: dict[int, set[int]] = {}
    for index in range(count):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{index}")
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(count))
        seen[index] = {free_port() for _ in range(50)}
        assert all(_owner(port, count) == index for port in seen[index])
    for index in range(1, count):
        assert not seen[0] & seen[index]  # no port could ever be handed to two workers


def test_free_port_outside_xdist_takes_any_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    ports = {free_port() for _ in range(50)}
    assert len(ports) > 1 and all(1024 <= port < 65536 for port in ports)
