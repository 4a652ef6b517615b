"""The model watcher's registry poll: the alias row each time, the version only when the alias moved."""

from __future__ import annotations

from typing import Any

import pytest

from reloop_service.registry import store
from reloop_service.serving.app import registry_holder

from .conftest import Registry


def test_poll_reads_the_version_only_when_the_alias_moves(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []
    real = store.get_production

    def counting(session: Any, *, model_name: str) -> Any:
        reads.append(1)
        return real(session, model_name=model_name)

    monkeypatch.setattr(store, "get_production", counting)
    holder = registry_holder(registry.settings, registry.engine)

    def fetch() -> tuple[int | None, int]:
        """The fetched version number and how many full version reads the fetch made."""
        before = len(reads)
        got = holder._fetch()
        return (got.version if got is not None else None), len(reads) - before

    assert fetch() == (None, 0)  # no production yet: the alias read says so
    v1 = registry.add_version(1)
    registry.promote(v1)
    assert fetch() == (v1, 1)
    for _ in range(3):
        assert fetch() == (v1, 0)  # the alias did not move: no version read
    v2 = registry.add_version(2, parent=v1)
    registry.promote(v2)
    assert fetch() == (v2, 1)
    assert fetch() == (v2, 0)
    registry.promote(v1)  # back to the first version: the alias moved again
    assert fetch() == (v1, 1)
