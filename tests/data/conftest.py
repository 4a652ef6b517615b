"""Fixtures of the data domain: a small feature spec and a writer of real Parquet click-log days."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from reloop_service.data.spec import CategoricalField, FeatureSpec, MultiCategoricalField, NumericField

from .datalog_helpers import DAY, WriteDay

torch.set_num_threads(1)


@pytest.fixture
def spec() -> FeatureSpec:
    return FeatureSpec(
        label="label",
        impression_id="impression_id",
        event_time="event_time",
        categorical=(CategoricalField("user_id", 1000), CategoricalField("device", 16)),
        numeric=(NumericField("price"),),
        multi=(MultiCategoricalField("tags", 64, 3),),
    )


@pytest.fixture
def write_day(tmp_path: Path) -> WriteDay:
    """Write a table (dict of columns or pa.Table) as ``<tmp>/logs/dt=<day>/<name>``; returns the file."""

    def _write(
        data: dict[str, list[Any]] | pa.Table, *, day: date = DAY, name: str = "part-0.parquet"
    ) -> Path:
        folder = tmp_path / "logs" / f"dt={day.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        table = data if isinstance(data, pa.Table) else pa.table(data)
        path = folder / name
        pq.write_table(table, path)
        return path

    return _write


@pytest.fixture
def logs_root(tmp_path: Path) -> str:
    return str(tmp_path / "logs")
