"""Logs ingested from S3, and a full loop (cycle, serving, archive, next cycle) with every URI on S3.

The S3 server is moto's real HTTP server on 127.0.0.1 (session fixture); the registry is a SQLite
file. Nothing but the registry may land on local disk.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from reloop_service.config import Settings
from reloop_service.data.simulator import ClickSimulator, SimulatorConfig
from reloop_service.storage import filesystem, join

from .conftest import S3Server
from .test_s3_storage import keys_under

DAY0 = date(2024, 1, 1)
DAY1 = date(2024, 1, 2)
ROWS = 1500


def simulator() -> ClickSimulator:
    return ClickSimulator(
        3, start=DAY0, config=SimulatorConfig(impressions_per_day=ROWS, n_users=300, n_items=100)
    )


def test_click_logs_ingested_from_s3(
    s3_server: S3Server, s3_prefix: str, s3_storage_options: dict[str, Any]
) -> None:
    from reloop_service.data.ingest import open_days

    sim = simulator()
    logs = join(s3_prefix, "logs")
    table, _ = sim.simulate_day(DAY0)
    sim.write_day(logs, DAY0, table, storage_options=s3_storage_options)
    # A second file of the same day repeats 10 impression ids with a null label: quarantined, not lost.
    bad = table.slice(0, 10).set_column(
        table.schema.get_field_index("label"), "label", pa.array([None] * 10, pa.int8())
    )
    fs, root = filesystem(logs, s3_storage_options)
    import io

    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(bad, buf)
    fs.pipe_file(join(root, f"dt={DAY0.isoformat()}", "part-00001.parquet"), buf.getvalue())

    day = open_days(logs, [DAY0], sim.spec, storage_options=s3_storage_options, batch_size=512)
    rows = sum(b.num_rows for b in day.iter_batches())
    again = sum(b.num_rows for b in day.iter_batches())  # re-iterable straight from S3
    assert rows == again == ROWS
    assert day.report.rows_read == ROWS + 10 and day.report.rows_valid == ROWS
    assert sum(day.report.quarantined.values()) == 10
    assert str(day.report.quarantine_uri).startswith("s3://")
    quarantined = keys_under(s3_server, join(logs, "_quarantine"))
    assert quarantined, "quarantined rows were not written to the bucket"


def s3_settings(tmp_path: Path, s3_server: S3Server, prefix: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "database_url": f"sqlite:///{tmp_path / 'registry.db'}",
        "logs_uri": join(prefix, "logs"),
        "artifacts_uri": join(prefix, "artifacts"),
        "archive_uri": join(prefix, "archive"),
        "reports_uri": join(prefix, "reports"),
        **s3_server.settings_overrides,
        "embedding_dim": 8,
        "mlp_hidden": (32, 16),
        "batch_size": 256,
        "threads": 1,
        "cycle_attempts": 1,
        "cycle_backoff_s": 0.0,
        "gate_max_auc_drop": 0.5,
        "gate_max_logloss_rise": 0.5,
        # 1,500 rows of a 7% CTR day: the storage plumbing is the subject, not the gate's constant baseline.
        "gate_min_gain_over_constant": None,
        "archive_flush_rows": 200,
        "watch_interval_s": 0.2,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.mark.slow
def test_cycle_serving_and_next_cycle_all_on_s3(s3_server: S3Server, s3_prefix: str, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from reloop_service.cycle.run import run_cycle
    from reloop_service.registry.db import upgrade
    from reloop_service.serving.app import create_app

    settings = s3_settings(tmp_path, s3_server, s3_prefix)
    options = settings.storage_options()
    upgrade(settings.resolved_database_url)
    sim = simulator()
    day1_table = None
    for day in (DAY0, DAY1):
        table, _ = sim.simulate_day(day)
        sim.write_day(settings.resolved_logs_uri, day, table, storage_options=options)
        day1_table = table

    first = run_cycle(settings=settings, cycle_date=DAY0, actor="test")
    assert first.status == "succeeded" and first.version == 1 and first.promoted, first

    # Serve day 1's impressions with version 1; the archive goes to the bucket.
    assert day1_table is not None
    features = [n for n in sim.spec.feature_names]
    records = day1_table.select([sim.spec.impression_id, *features]).to_pylist()
    with TestClient(create_app(settings)) as client:
        for start in range(0, len(records), 500):
            items = [
                {"impression_id": r[sim.spec.impression_id], "features": {k: r[k] for k in features}}
                for r in records[start : start + 500]
            ]
            resp = client.post("/v1/predict", json={"items": items})
            assert resp.status_code == 200, resp.text
            assert resp.json()["model_version"] == 1
    parts = keys_under(s3_server, settings.resolved_archive_uri)
    assert parts and all("/version=1/part-" in k for k in parts), parts

    # The next cycle joins the archived predictions from the bucket and trains v2.
    second = run_cycle(settings=settings, cycle_date=DAY1, actor="test")
    assert second.status == "succeeded" and second.version == 2, second
    coverage = second.record.coverage
    assert coverage is not None and coverage.archived == ROWS and coverage.recomputed == 0, coverage

    # Artifacts and reports are on the bucket, and readable back through the registry.
    artifacts = keys_under(s3_server, settings.resolved_artifacts_uri)
    assert len(artifacts) == 2, artifacts
    assert keys_under(s3_server, settings.resolved_reports_uri)
    from reloop_service.registry.artifacts import ArtifactStore
    from reloop_service.registry.db import make_engine, session_scope
    from reloop_service.registry.store import get_version

    engine = make_engine(settings.resolved_database_url)
    with session_scope(engine) as session:
        v2 = get_version(session, model_name="ctr", version=2)
    engine.dispose()
    assert v2.artifact.uri.startswith("s3://")
    assert len(ArtifactStore(settings.resolved_artifacts_uri, options).get(v2.artifact)) == v2.artifact.size

    # Nothing but the registry (and empty scratch folders) on local disk.
    local = [p for p in (tmp_path / "data").rglob("*") if p.is_file()] if (tmp_path / "data").exists() else []
    assert local == [], local
