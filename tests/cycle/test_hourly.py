"""Sub-daily cycles (issue 16): hourly partitions, periods named by their start, an empty hour."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

import reloop_service
from reloop_service.config import Settings
from reloop_service.cycle.run import FIXED_COSTS, make_cycle_trigger, run_cycle
from reloop_service.cycle.scheduler import catch_up, plan_catch_up
from reloop_service.data.period import HOUR, Period, PeriodError
from reloop_service.registry import cycle_runs, store
from reloop_service.registry.db import make_engine, session_scope
from reloop_service.serving.harness import in_process
from reloop_service.training.checkpoint import CheckpointError, checkpoint_from_bytes, checkpoint_to_bytes

from .cycle_data import DAY0, write_day
from .hourly_data import FakeClock, mark, write_hour

Env = Callable[..., Settings]
H0 = Period(datetime(DAY0.year, DAY0.month, DAY0.day, tzinfo=UTC), HOUR)
HOUR_ROWS = 700


def _hourly(env: Env, **overrides: object) -> Settings:
    return env(**{"cycle_period": "1h", "min_day_rows": 100, **overrides})


def _registry(settings: Settings) -> tuple[dict[str, object], list[object], object]:
    engine = make_engine(settings.resolved_database_url)
    try:
        with session_scope(engine, readonly=True) as session:
            runs = {r.period: r for r in cycle_runs.list_cycle_runs(session, model_name=settings.model_name)}
            versions = store.list_versions(session, model_name=settings.model_name)
            production = store.get_production(session, model_name=settings.model_name)
    finally:
        engine.dispose()
    return runs, list(versions), production


# ----------------------------------------------------------------------------------------- Period
def test_period_names_partitions_and_bad_values() -> None:
    assert Period.of_day(date(2024, 5, 1)).name == "2024-05-01"
    assert Period.of_day(date(2024, 5, 1)).partitions() == ("dt=2024-05-01",)
    hour = Period.parse("2024-05-01T13", HOUR)
    assert hour.name == "2024-05-01T13" and hour.end == datetime(2024, 5, 1, 14, tzinfo=UTC)
    assert hour.partitions() == ("dt=2024-05-01/hr=13",)
    assert Period.parse("2024-05-01T13:30", timedelta(minutes=30)).partitions() == (
        "dt=2024-05-01/hr=13/mi=30",
    )
    two = Period.parse("2024-05-01T12", timedelta(hours=2))
    assert two.partitions() == ("dt=2024-05-01/hr=12", "dt=2024-05-01/hr=13")
    merged = Period.parse("2024-05-01T22", HOUR).merged(3)
    assert merged.describe() == "2024-05-01T22..2024-05-02T00 (3 periods)"
    assert merged.partitions()[-1] == "dt=2024-05-02/hr=00" and merged == Period.parse("2024-05-01T22", HOUR)
    # Periods sort by start and a bare date is the day's first hour.
    midnight = Period.parse("2024-05-01", HOUR)
    assert midnight < hour and midnight.name == "2024-05-01T00"
    with pytest.raises(PeriodError, match="not the start of a 2h period"):
        Period.parse("2024-05-01T13", timedelta(hours=2))
    with pytest.raises(PeriodError, match="names a day but the cycle period is 1h"):
        Period.coerce(date(2024, 5, 1), HOUR)
    with pytest.raises(PeriodError, match="not a period start"):
        Period.parse("2024-05-01 1pm", HOUR)
    assert Settings(cycle_period="60m").cycle_period == "1h" and Settings().cycle_period == "1d"


def test_a_bad_cycle_period_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    env = {"RELOOP_CYCLE_PERIOD": "7h", "RELOOP_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "reloop_service.cli", "cycle", "runs"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "error: RELOOP_CYCLE_PERIOD='7h'" in proc.stderr and "divide a day" in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if "RELOOP_CYCLE_PERIOD" in line]) == 1


# ------------------------------------------------------------------------------------- layouts
def test_hourly_cycles_read_their_hour_and_name_the_period(cycle_env: Env) -> None:
    settings = _hourly(cycle_env)
    logs = Path(settings.resolved_logs_uri)
    write_hour(logs, H0, HOUR_ROWS)
    write_hour(logs, H0.next(), HOUR_ROWS)
    # A daily partition of the same day is not an hourly period's data.
    write_day(logs, DAY0, 50)
    first = run_cycle(settings=settings, cycle_date=H0, actor="test")
    assert first.status == "succeeded", first.error
    assert first.period_name == "2024-03-01T00" and first.record.cycle_date == "2024-03-01T00"
    assert first.record.ingest is not None and first.record.period is not None
    assert first.record.ingest.rows_valid == HOUR_ROWS  # the hour alone, not the day
    assert first.record.period.end == "2024-03-01T01:00:00+00:00"
    # Fixed costs are measured per cycle; the history plot is redrawn once a day, not every hour.
    assert set(FIXED_COSTS) <= set(first.record.costs) and first.record.costs["train"] > 0
    assert first.report is not None and first.report.plot_uri is None
    second = run_cycle(settings=settings, cycle_date=H0.next(), actor="test")
    assert second.status == "succeeded", second.error
    assert second.parent_version == first.version  # warm-started from the previous hour
    runs, versions, _ = _registry(settings)
    assert set(runs) == {"2024-03-01T00", "2024-03-01T01"}
    assert all(r.cycle_date == DAY0 for r in runs.values())  # type: ignore[attr-defined]
    assert sorted(v.period for v in versions) == ["2024-03-01T00", "2024-03-01T01"]  # type: ignore[attr-defined]
    # Exactly once per hour: the same hour again is a no-op.
    again = run_cycle(settings=settings, cycle_date=Period.parse("2024-03-01T01", HOUR), actor="test")
    assert again.status == "skipped" and again.reason == "succeeded"


def test_an_hour_with_no_rows_is_skipped_and_changes_nothing(sqlite_env: Env) -> None:
    settings = _hourly(sqlite_env)
    logs = Path(settings.resolved_logs_uri)
    write_hour(logs, H0, HOUR_ROWS)
    assert run_cycle(settings=settings, cycle_date=H0, actor="test").status == "succeeded"
    _, versions_before, production_before = _registry(settings)
    write_hour(logs, H0.next(), 0)  # the hour's file exists and holds no rows
    empty = run_cycle(settings=settings, cycle_date=H0.next(), actor="test")
    assert empty.status == "skipped" and empty.reason == "no_data"
    assert "2024-03-01T01" in (empty.error or "")
    missing = run_cycle(settings=settings, cycle_date=H0.next().next(), actor="test")
    assert missing.status == "skipped" and missing.reason == "no_data"
    assert "dt=2024-03-01/hr=02" in (missing.error or "")
    runs, versions, production = _registry(settings)
    assert runs["2024-03-01T01"].status.value == "skipped"  # type: ignore[attr-defined]
    assert len(versions) == len(versions_before) and production == production_before


# ------------------------------------------------------------------------------------ readiness
def test_readiness_by_marker_skips_then_runs_once_the_marker_lands(sqlite_env: Env) -> None:
    settings = _hourly(sqlite_env, readiness="marker", readiness_attempts=2, readiness_backoff_s=60)
    logs = Path(settings.resolved_logs_uri)
    write_hour(logs, H0, HOUR_ROWS, marker=False)
    clock = FakeClock(H0.end + timedelta(hours=5))  # long ended: only the marker is missing
    first = run_cycle(settings=settings, cycle_date=H0, actor="test", clock=clock)
    assert first.status == "skipped" and first.reason == "not_ready", first.error
    assert "not ready after 2 check(s)" in (first.error or "") and "no _SUCCESS in dt=2024-03-01/hr=00" in (
        first.error or ""
    )
    assert clock.sleeps == [60.0]  # bounded: two checks, one wait between them
    runs, versions, production = _registry(settings)
    assert runs["2024-03-01T00"].status.value == "skipped" and versions == [] and production is None  # type: ignore[attr-defined]
    mark(logs, H0)
    again = run_cycle(
        settings=settings, cycle_date=H0, actor="test", clock=clock
    )  # a skipped period is reclaimed
    assert again.status == "succeeded" and again.attempt == 2, again.error
    assert (
        again.record.readiness.checks == 1 and "_SUCCESS in all 1 partition" in again.record.readiness.reason
    )


def test_readiness_by_label_delay_waits_with_an_injected_clock(sqlite_env: Env) -> None:
    settings = _hourly(
        sqlite_env, readiness="delay", label_delay="30m", readiness_attempts=4, readiness_backoff_s=300
    )
    write_hour(Path(settings.resolved_logs_uri), H0, HOUR_ROWS, marker=False)
    clock = FakeClock(H0.end + timedelta(minutes=10))
    outcome = run_cycle(settings=settings, cycle_date=H0, actor="test", clock=clock)
    assert outcome.status == "succeeded", outcome.error
    # checks at +10m, +15m, +25m (not yet 30 minutes after the hour), then +45m: ready
    assert clock.sleeps == [300.0, 600.0, 1200.0]
    assert outcome.record.readiness.checks == 4
    assert "label delay 30m passed" in outcome.record.readiness.reason


def test_a_period_still_open_is_never_trained_on(sqlite_env: Env) -> None:
    settings = _hourly(sqlite_env, readiness="either", readiness_attempts=3, readiness_backoff_s=60)
    write_hour(Path(settings.resolved_logs_uri), H0, HOUR_ROWS, marker=True)  # even with its marker
    clock = FakeClock(H0.start + timedelta(minutes=59))
    outcome = run_cycle(settings=settings, cycle_date=H0, actor="test", clock=clock)
    assert outcome.status == "skipped" and outcome.reason == "not_ready"
    # answered at once: backing off a minute or two cannot close an hour
    assert "is still open" in (outcome.error or "") and clock.sleeps == []
    assert outcome.record.readiness is not None and outcome.record.readiness.checks == 1


def test_a_late_partition_arriving_after_a_not_ready_retry_is_trained_on(sqlite_env: Env) -> None:
    settings = _hourly(sqlite_env, readiness="marker", readiness_attempts=3, readiness_backoff_s=120)
    logs = Path(settings.resolved_logs_uri)
    arrived: list[float] = []

    def late_delivery(_seconds: float) -> None:
        if not arrived:  # the upstream job lands the hour (files, then _SUCCESS) during the first wait
            write_hour(logs, H0, HOUR_ROWS, marker=True)
        arrived.append(_seconds)

    clock = FakeClock(H0.end + timedelta(minutes=1), on_sleep=late_delivery)
    outcome = run_cycle(settings=settings, cycle_date=H0, actor="test", clock=clock)
    assert outcome.status == "succeeded", outcome.error
    assert clock.sleeps == [120.0] and outcome.record.readiness.checks == 2
    assert outcome.record.ingest.rows_valid == HOUR_ROWS


# ------------------------------------------------------------------------------------- catch-up
def test_plan_catch_up_in_hours_merges_the_oldest_beyond_the_bound() -> None:
    target = Period.parse("2024-05-02T06", HOUR)
    last = Period.parse("2024-05-01T00", HOUR)
    plan = plan_catch_up(target=target, succeeded={last}, last_success=last, max_catchup_days=7)
    assert len(plan.to_run) == 30 and plan.to_run[0].name == "2024-05-01T01" and plan.merged is None
    assert plan.to_run == sorted(plan.to_run)  # oldest first
    merged = plan_catch_up(
        target=target, succeeded={last}, last_success=last, max_catchup_days=7, max_catchup_periods=6
    )
    assert len(merged.to_run) == 6 and merged.merged is not None and merged.merged.count == 25
    assert merged.to_run[0].describe() == "2024-05-01T01..2024-05-02T01 (25 periods)"
    assert [p.name for p in merged.to_run[1:]] == [f"2024-05-02T0{h}" for h in range(2, 7)]
    # The lookback bound is in days whatever the period: 1 day of hours = 24 run, 6 logged.
    bounded = plan_catch_up(target=target, succeeded={last}, last_success=last, max_catchup_days=1)
    assert len(bounded.to_run) == 24 and len(bounded.beyond_bound) == 6


def test_catch_up_after_30_missed_hours_merges_and_says_so(
    sqlite_env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _hourly(sqlite_env, max_catchup_periods=6, min_day_rows=50)
    logs = Path(settings.resolved_logs_uri)
    hours = [Period(H0.start + timedelta(hours=i), HOUR) for i in range(31)]
    for hour in hours:
        write_hour(logs, hour, 300 if hour != hours[0] else HOUR_ROWS)
    assert run_cycle(settings=settings, cycle_date=hours[0], actor="test").status == "succeeded"
    # 30 hours of downtime: the catch-up runs 6 cycles, the oldest 25 hours as one.
    with caplog.at_level(logging.INFO, logger="reloop_service.cycle.scheduler"):
        outcomes = catch_up(settings=settings, target=hours[30])
    assert [o.period_name for o in outcomes] == [hours[1].name, *(h.name for h in hours[26:])]
    assert all(o.status == "succeeded" for o in outcomes), [o.error for o in outcomes]
    first = outcomes[0]
    assert first.period is not None and first.period.count == 25
    assert first.record.period.parts == [h.name for h in hours[1:26]]
    assert first.record.ingest.rows_valid == 25 * 300
    assert "the oldest 25 merged into one cycle 2024-03-01T01..2024-03-02T01 (25 periods)" in caplog.text
    report = Path(first.report.markdown_uri).read_text() if first.report else ""
    assert "25 periods 2024-03-01T01..2024-03-02T01 merged into this one cycle" in report
    # In order: each starts from the production left by the one before (promoted or rejected by the gate).
    production = outcomes[0].version if outcomes[0].promoted else outcomes[0].parent_version
    for o in outcomes[1:]:
        assert o.parent_version == production and o.decision in ("promoted", "rejected")
        production = o.version if o.promoted else production
    # Nothing left to catch up: the merged run covers its 25 hours.
    assert catch_up(settings=settings, target=hours[30]) == []
    runs, _, _ = _registry(settings)
    assert sorted(runs) == sorted([hours[0].name, hours[1].name, *(h.name for h in hours[26:])])


# ------------------------------------------------------------------------------ API and dashboard
@pytest.mark.skipif(shutil.which("node") is None, reason="node runs the dashboard's chart module")
def test_the_api_and_the_dashboard_name_hourly_periods_by_their_start(sqlite_env: Env) -> None:
    token = "hourly-test-token"
    settings = _hourly(sqlite_env, admin_token=token)
    logs = Path(settings.resolved_logs_uri)
    h13 = Period(H0.start + timedelta(hours=13), HOUR)
    write_hour(logs, h13, HOUR_ROWS)
    assert run_cycle(settings=settings, cycle_date=h13, actor="test").status == "succeeded"
    auth = {"Authorization": f"Bearer {token}"}
    with in_process(settings, cycle_trigger=make_cycle_trigger(settings)) as service:
        client = service.client
        runs = client.get("/v1/admin/cycles", headers=auth).json()["runs"]
        assert [(r["period"], r["cycle_date"]) for r in runs] == [("2024-03-01T13", "2024-03-01")]
        assert runs[0]["details"]["cycle_date"] == "2024-03-01T13"
        assert runs[0]["details"]["period"]["end"] == "2024-03-01T14:00:00+00:00"
        version = client.get("/v1/admin/versions", headers=auth).json()["versions"][0]
        assert version["period"] == "2024-03-01T13"
        # The trigger takes a period start; a start that is not an hour's, or a day, is a 422 naming it.
        bad = client.post("/v1/admin/cycles", json={"date": "2024-03-01T13:30"}, headers=auth)
        assert bad.status_code == 422 and "not the start of a 1h period" in bad.text
        assert (
            client.post("/v1/admin/cycles", json={"date": "2024-03-01 13"}, headers=auth).status_code == 422
        )
        write_hour(logs, h13.next(), HOUR_ROWS)
        started = client.post("/v1/admin/cycles", json={"date": "2024-03-01T14"}, headers=auth)
        assert started.status_code == 202, started.text
        run_id = started.json()["run_id"]
        for thread in threading.enumerate():  # the trigger runs the cycle in a thread of that name
            if thread.name == "cycle-2024-03-01T14":
                thread.join(timeout=120)
        done = client.get(f"/v1/admin/cycles/{run_id}", headers=auth).json()
        assert done["period"] == "2024-03-01T14" and done["status"] == "succeeded", done["error"]
        page = client.get("/ui").text
        assert "Period" in page and 'pattern="\\d{4}-\\d{2}-\\d{2}(T\\d{2}(:\\d{2})?)?"' in page
    # The dashboard's chart code places and labels the runs by their period (the shipped ES module, in node).
    script = (
        "import {chartPoints, periodStart} from 'file://%s';"
        "const runs = JSON.parse(process.argv[1]);"
        "console.log(JSON.stringify({pts: chartPoints(runs, 'auc').map(p => [p.label, p.date.toISOString()]),"
        "minute: periodStart('2024-03-01T13:30').toISOString()}));"
    ) % (Path(reloop_service.__file__).parent / "serving" / "static" / "chart.js")
    shown = subprocess.run(
        ["node", "--input-type=module", "-e", script, json.dumps(runs)],
        capture_output=True,
        text=True,
        check=True,
    )
    out = json.loads(shown.stdout)
    assert out["pts"] == [["2024-03-01T13", "2024-03-01T13:00:00.000Z"]]
    assert out["minute"] == "2024-03-01T13:30:00.000Z"


def test_cycle_artifacts_are_compressed_and_a_corrupt_frame_is_refused(sqlite_env: Env) -> None:
    settings = _hourly(sqlite_env)
    write_hour(Path(settings.resolved_logs_uri), H0, HOUR_ROWS)
    outcome = run_cycle(settings=settings, cycle_date=H0, actor="test")
    assert outcome.status == "succeeded", outcome.error
    _, versions, _ = _registry(settings)
    stored = Path(versions[0].artifact.uri).read_bytes()  # type: ignore[attr-defined]
    assert stored.startswith(b"RLCKZST1")
    ckpt = checkpoint_from_bytes(stored)
    assert len(checkpoint_to_bytes(ckpt)) > len(stored)  # the plain torch.save form is larger
    with pytest.raises(CheckpointError, match="compressed frame"):
        checkpoint_from_bytes(stored[:-100])


def test_the_simulator_writes_hourly_partitions_with_their_marker(tmp_path: Path) -> None:
    from reloop_service.data.ingest import open_days
    from reloop_service.data.simulator import ClickSimulator, SimulatorConfig

    sim = ClickSimulator(0, start=DAY0, config=SimulatorConfig(impressions_per_day=2400))
    table, _ = sim.simulate_day(DAY0)
    day = Period.of_day(DAY0)
    hours = [Period(day.start + timedelta(hours=h), HOUR) for h in range(24)]
    for hour in hours:
        sim.write_period(str(tmp_path), hour, table)
    assert all((tmp_path / h.partitions()[0] / "_SUCCESS").exists() for h in hours)
    counts = [open_days(str(tmp_path), [h], sim.spec, quarantine=False).report.rows_valid for h in hours]
    assert sum(counts) == table.num_rows and min(counts) > 0
    batch = next(open_days(str(tmp_path), [hours[13]], sim.spec, quarantine=False).iter_batches())
    times = batch.column(sim.spec.event_time).to_pylist()
    assert all(hours[13].start <= t < hours[13].end for t in times)


def test_an_hourly_replay_runs_one_bin_per_hour_and_prints_its_fixed_costs(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from reloop_service.cli import app
    from reloop_service.replay.sources import synthetic_data

    data = synthetic_data(bins=30, impressions=2400, period="1h")
    assert [str(p) for p in data.dates[:2]] == ["2000-01-01T00", "2000-01-01T01"] and data.n_bins == 30
    assert data.dates[24].name == "2000-01-02T00"  # type: ignore[union-attr]
    assert sorted(set(data.table.column("bin").to_pylist())) == list(range(30))
    out = tmp_path / "replay"
    argv = "replay synthetic --period 1h --bins 6 --impressions 12000 --strategies bce --seeds 1 --workers 1"
    argv += " --warmup-bins 2 --select-bins 2..3 --report-from 3 --bootstrap 10 --embedding-dim 4 --mlp 8"
    result = CliRunner().invoke(app, [*argv.split(), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "per cycle (4 cycles, one per 1h): fixed cost median" in result.output
    assert "training rows/s" in result.output and "% of the 1h period" in result.output
    bins = json.loads((out / "results.json").read_text())["runs"][0]["bins"]
    assert [b["date"] for b in bins] == ["2000-01-01T02", "2000-01-01T03", "2000-01-01T04", "2000-01-01T05"]
    assert all(b["fixed_seconds"] > 0 and b["train_seconds"] > 0 for b in bins)


def test_backfill_takes_hours_and_the_scheduler_ticks_once_an_hour(sqlite_env: Env) -> None:
    from typer.testing import CliRunner

    from reloop_service.cli import app
    from reloop_service.cycle.scheduler import CycleScheduler, target_period

    from .test_backfill_cli import _env

    settings = _hourly(sqlite_env)
    logs = Path(settings.resolved_logs_uri)
    for h in range(3):
        write_hour(logs, Period(H0.start + timedelta(hours=h), HOUR), HOUR_ROWS)
    env = {**_env(settings), "RELOOP_CYCLE_PERIOD": "1h", "RELOOP_MIN_DAY_ROWS": "100"}
    res = CliRunner().invoke(
        app, ["cycle", "backfill", "--from", "2024-03-01T00", "--to", "2024-03-01T03", "--json"], env=env
    )
    report = json.loads(res.stdout)
    assert res.exit_code == 0, res.output
    assert [(r["date"], r["status"]) for r in report["ran"]] == [
        ("2024-03-01T00", "succeeded"),
        ("2024-03-01T01", "succeeded"),
        ("2024-03-01T02", "succeeded"),
        ("2024-03-01T03", "skipped"),  # no partition for that hour: skipped, not a failure
    ]
    bad = CliRunner().invoke(app, ["cycle", "run", "--date", "2024-03-01T00:30"], env=env)
    assert bad.exit_code == 1 and "--date: " in bad.output and "not the start of a 1h period" in bad.output
    # The scheduler: one tick an hour, label_delay after it; its target is the last hour that has ended.
    delayed = Settings(cycle_period="1h", label_delay="20m", scheduler_port=0)
    trigger = CycleScheduler(delayed, run=lambda **_: None).trigger  # type: ignore[arg-type,return-value]
    first = trigger.get_next_fire_time(None, datetime(2024, 5, 1, 13, 5, tzinfo=UTC))
    assert first == datetime(2024, 5, 1, 13, 20, tzinfo=UTC)
    assert target_period(delayed, datetime(2024, 5, 1, 13, 20, tzinfo=UTC)).name == "2024-05-01T12"


def test_logs_check_reads_an_hourly_layout(sqlite_env: Env) -> None:
    from typer.testing import CliRunner

    from reloop_service.cli import app

    settings = _hourly(sqlite_env)
    logs = Path(settings.resolved_logs_uri)
    for h in (0, 1, 5):
        write_hour(logs, Period(H0.start + timedelta(hours=h), HOUR), 200)
    base = ["logs", "check", "--logs", str(logs), "--spec", str(settings.spec_path), "--json"]
    env = {"RELOOP_CYCLE_PERIOD": "1h", "RELOOP_DATA_DIR": str(settings.data_dir)}
    day = CliRunner().invoke(app, [*base, "--date", "2024-03-01"], env=env)
    assert day.exit_code == 0, day.output
    assert json.loads(day.stdout)["rows_valid"] == 600  # the day's hours that exist
    hour = CliRunner().invoke(app, [*base, "--date", "2024-03-01T05"], env=env)
    assert hour.exit_code == 0 and json.loads(hour.stdout)["rows_valid"] == 200
    empty = CliRunner().invoke(app, [*base, "--date", "2024-03-01T02"], env=env)
    assert empty.exit_code == 3 and "no click logs" in empty.output
