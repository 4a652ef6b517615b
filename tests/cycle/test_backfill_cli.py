"""``reloop cycle backfill`` as an operator uses it: a failed day is reported and fails the exit code, a
rerun retries it, a day without logs is skipped (reported, not a failure), ``--reprocess none`` says
which days it left alone. Real Parquet logs, a real SQLite registry, the CLI in-process."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from reloop_service.cli import app
from reloop_service.config import Settings

from .cycle_data import DAY0, write_day

Env = Callable[..., Settings]


def _env(settings: Settings) -> dict[str, str]:
    return {
        "RELOOP_DATA_DIR": str(settings.data_dir),
        "RELOOP_DATABASE_URL": settings.resolved_database_url,
        "RELOOP_SPEC_PATH": str(settings.spec_path),
        "RELOOP_EMBEDDING_DIM": "8",
        "RELOOP_MLP_HIDDEN": "[32, 16]",
        "RELOOP_BATCH_SIZE": "256",
        "RELOOP_THREADS": "1",
        "RELOOP_CYCLE_ATTEMPTS": "1",
        "RELOOP_CYCLE_BACKOFF_S": "0",
        "RELOOP_GATE_MAX_AUC_DROP": "0.2",
        "RELOOP_GATE_MAX_LOGLOSS_RISE": "0.2",
    }


def _backfill(settings: Settings, *extra: str) -> tuple[int, dict[str, Any], str]:
    first, last = DAY0.isoformat(), (DAY0 + timedelta(days=3)).isoformat()
    res = CliRunner().invoke(
        app, ["cycle", "backfill", "--from", first, "--to", last, "--json", *extra], env=_env(settings)
    )
    return res.exit_code, json.loads(res.stdout), res.stderr


def test_backfill_reports_failed_and_skipped_days_and_retries_failures(sqlite_env: Env) -> None:
    settings = sqlite_env()
    logs = Path(settings.resolved_logs_uri)
    days = [DAY0 + timedelta(days=i) for i in range(4)]
    write_day(logs, days[0], 1200)
    bad = logs / f"dt={days[1].isoformat()}"
    bad.mkdir(parents=True)
    (bad / "part-0.parquet").write_bytes(b"not parquet at all")
    write_day(logs, days[2], 1200)
    # days[3]: no partition at all

    code, report, stderr = _backfill(settings)
    assert code == 1  # a day failed
    status = {r["date"]: r["status"] for r in report["ran"]}
    assert status == {
        days[0].isoformat(): "succeeded",
        days[1].isoformat(): "failed",
        days[2].isoformat(): "succeeded",
        days[3].isoformat(): "skipped",  # no data: reported, not a failure
    }
    assert report["failed"] == 1 and report["skipped"] == 1 and report["succeeded"] == 2
    assert str(settings.data_dir.resolve()) in stderr  # it said where it looked

    # the data is fixed: the default rerun retries the failed day (and the skipped one), not the others
    (bad / "part-0.parquet").unlink()
    write_day(logs, days[1], 1200)
    code, report, _ = _backfill(settings)
    assert code == 0, report
    assert [r["date"] for r in report["ran"]] == [days[1].isoformat(), days[3].isoformat()]
    assert [r["status"] for r in report["ran"]] == ["succeeded", "skipped"]
    assert {d["date"]: d["status"] for d in report["not_run"]} == {
        days[0].isoformat(): "succeeded",
        days[2].isoformat(): "succeeded",
    }


def test_backfill_reprocess_none_names_the_days_it_left_alone(sqlite_env: Env) -> None:
    settings = sqlite_env()
    logs = Path(settings.resolved_logs_uri)
    bad = logs / f"dt={DAY0.isoformat()}"
    bad.mkdir(parents=True)
    (bad / "part-0.parquet").write_bytes(b"garbage")
    code, report, _ = _backfill(settings)
    assert code == 1 and report["failed"] == 1

    res = CliRunner().invoke(
        app,
        ["cycle", "backfill", "--from", DAY0.isoformat(), "--to", DAY0.isoformat(), "--reprocess", "none"],
        env=_env(settings),
    )
    assert res.exit_code == 1  # the range still holds a failed day
    assert f"{DAY0}: not re-run (status failed) (use --reprocess failed)" in res.stdout
    assert "0 run" in res.stdout and "1 not re-run" in res.stdout
    assert f"still failed (not re-run): {DAY0}" in res.stdout
