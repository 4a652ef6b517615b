"""The fault suite: every test here drives real processes (uvicorn, ``reloop`` CLI, PostgreSQL) and sends
real signals. All of them carry the ``faults`` marker (``pytest -m faults`` runs just this suite)."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.faults)
