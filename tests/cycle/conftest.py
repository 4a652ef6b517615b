"""Fixtures for the daily-cycle tests: a small feature spec, generated click logs with signal, settings.

The logs are real Parquet files under ``<data_dir>/logs/dt=YYYY-MM-DD/``; the registry is a real
SQLite file or PostgreSQL schema (root ``db_url`` fixture); models are tiny (embedding 8, MLP 32-16)
so a whole cycle takes a second or two on a loaded 2-core machine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from reloop_service.config import Settings

from .cycle_data import make_settings


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def cycle_env(tmp_path: Path, db_url: str) -> Callable[..., Settings]:
    """Build settings on a migrated registry (SQLite file or PostgreSQL schema) under ``tmp_path``."""
    from reloop_service.registry.db import upgrade

    upgrade(db_url)

    def build(**overrides: Any) -> Settings:
        return make_settings(tmp_path, db_url, **overrides)

    return build


@pytest.fixture
def sqlite_env(tmp_path: Path) -> Callable[..., Settings]:
    """Like ``cycle_env`` but SQLite only (tests whose subject is not the database)."""
    from reloop_service.registry.db import upgrade

    url = f"sqlite:///{tmp_path / 'registry.db'}"
    upgrade(url)

    def build(**overrides: Any) -> Settings:
        return make_settings(tmp_path, url, **overrides)

    return build
