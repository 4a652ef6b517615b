"""The daily cycle end to end on real Parquet logs, a real registry and real artifacts."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import update

from reloop_service.config import Settings
from reloop_service.cycle import steps
from reloop_service.cycle.run import CycleOutcome, run_cycle
from reloop_service.registry import cycle_runs, store
from reloop_service.registry.db import make_engine, session_scope
from reloop_service.registry.errors import ClaimLostError
from reloop_service.registry.events import CycleStatus, VersionStatus
from reloop_service.registry.orm import CycleRunRow
from reloop_service.training.trainer import PRIOR_COLUMN

from .cycle_data import DAY0, write_day

ROWS = 1500
Env = Callable[..., Settings]


def _logs(settings: Settings) -> Path:
    return Path(settings.resolved_logs_uri)


def _registry(settings: Settings) -> dict[str, Any]:
    """Production version, all versions with status, and the cycle runs, read fresh."""
    engine = make_engine(settings.resolved_database_url)
    try:
        with session_scope(engine, readonly=True) as session:
            prod = store.get_production(session, model_name=settings.model_name)
            versions = store.list_versions(session, model_name=settings.model_name, limit=100)
            runs = cycle_runs.list_cycle_runs(session, model_name=settings.model_name)
    finally:
        engine.dispose()
    return {
        "production": prod.version.version if prod else None,
        "versions": {v.version: v for v in versions},
        "runs": {r.cycle_date: r for r in runs},
    }


def _files(root: Path) -> dict[str, int]:
    return (
        {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}
        if root.exists()
        else {}
    )


def _ok(outcome: CycleOutcome) -> CycleOutcome:
    assert outcome.status == "succeeded", outcome.error
    return outcome


# ------------------------------------------------------------------------------ cold start, idempotency
def test_cold_start_then_warm_start_idempotent_and_reported(sqlite_env: Env) -> None:
    settings = sqlite_env(gate_auc_floor=None)
    for i in range(2):
        write_day(_logs(settings), DAY0 + timedelta(days=i), ROWS)

    first = _ok(run_cycle(settings=settings, cycle_date=DAY0, actor="test"))
    assert first.version == 1 and first.promoted and first.parent_version is None
    assert first.record.coverage is not None and first.record.train is not None
    assert first.record.coverage.source == "cold_start"
    assert first.record.coverage.missing == ROWS
    assert first.record.train.loss == "bce" and first.record.train.cold_start
    # A cold start is still judged against the constant predictor (the training CTR).
    gate = first.verdict
    assert gate is not None and gate.constant is not None
    assert gate.passed and [r.name for r in gate.rules] == ["beats_constant"]
    assert gate.production is None
    assert gate.rules[0].value == gate.constant.logloss - gate.candidate.logloss > 0
    assert 0.5 < gate.candidate.auc <= 1.0 and gate.candidate.logloss > 0
    assert gate.holdout_rows == first.record.train.holdout_rows > 0

    again = run_cycle(settings=settings, cycle_date=DAY0, actor="test")
    assert again.status == "skipped" and again.reason == "succeeded" and again.version == 1

    second = _ok(run_cycle(settings=settings, cycle_date=DAY0 + timedelta(days=1), actor="test"))
    assert second.parent_version == 1 and second.version == 2
    assert second.record.train is not None and second.record.coverage is not None
    assert second.record.train.loss == "reloop" and not second.record.train.cold_start
    # No archive exists, so every prior was recomputed with the parent's artifact.
    cov = second.record.coverage
    assert (cov.archived, cov.recomputed, cov.missing) == (0, ROWS, 0)

    reg = _registry(settings)
    assert reg["production"] == 2
    v2 = reg["versions"][2]
    assert v2.parent_version == 1 and v2.cycle_date == DAY0 + timedelta(days=1)
    assert v2.gate_verdict is not None and v2.gate_verdict["production"]["auc"] is not None
    assert v2.metrics["prior_coverage"]["recomputed"] == ROWS
    assert reg["versions"][1].status == VersionStatus.ARCHIVED
    run = reg["runs"][DAY0 + timedelta(days=1)]
    assert run.status == CycleStatus.SUCCEEDED and run.produced_version == 2
    assert run.details.ingest is not None and run.details.coverage is not None
    assert run.details.ingest.rows_valid == ROWS and run.details.coverage.rows == ROWS
    assert run.details.gate == second.verdict and run.details.decision == "promoted"

    forced = _ok(run_cycle(settings=settings, cycle_date=DAY0, force=True, actor="test"))
    assert forced.version == 3 and forced.attempt == 2

    reports = Path(settings.resolved_reports_uri)
    assert (reports / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((reports / "runs" / f"cycle-{DAY0 + timedelta(days=1)}-run2-a1.json").read_text())
    assert record["version"] == 2 and record["decision"] == "promoted"
    assert (
        "## Gate: passed" in (reports / "runs" / f"cycle-{DAY0 + timedelta(days=1)}-run2-a1.md").read_text()
    )


def test_quarantine_counts_are_recorded(sqlite_env: Env) -> None:
    settings = sqlite_env()
    table = write_day(_logs(settings), DAY0, ROWS)
    bad = table.slice(0, 3).set_column(1, "label", pa.array([2, 2, 7], pa.int64()))
    pq.write_table(bad, _logs(settings) / f"dt={DAY0}" / "part-1.parquet")
    outcome = _ok(run_cycle(settings=settings, cycle_date=DAY0, actor="test"))
    ingest = outcome.record.ingest
    assert ingest is not None and ingest.rows_read == ROWS + 3 and ingest.rows_valid <= ROWS
    assert sum(ingest.quarantined.values()) == ingest.rows_read - ingest.rows_valid >= 3
    stored = _registry(settings)["runs"][DAY0].details.ingest
    assert stored is not None and stored.quarantined == ingest.quarantined


# --------------------------------------------------------------------------------- the claim
def test_concurrent_triggers_train_exactly_once(cycle_env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = cycle_env()
    write_day(_logs(settings), DAY0, ROWS)
    trained: list[str] = []
    real_train = steps.train_candidate

    def counting_train(ctx: steps.CycleContext, **kw: Any) -> Any:
        trained.append(ctx.run.owner)
        return real_train(ctx, **kw)

    monkeypatch.setattr(steps, "train_candidate", counting_train)
    barrier = threading.Barrier(3)
    outcomes: list[CycleOutcome] = []

    def trigger(actor: str) -> None:
        barrier.wait()
        outcomes.append(run_cycle(settings=settings, cycle_date=DAY0, actor=actor))

    threads = [threading.Thread(target=trigger, args=(f"t{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(outcomes) == 3
    assert sorted(o.status for o in outcomes) == ["skipped", "skipped", "succeeded"]
    assert all(o.reason in ("held", "succeeded") for o in outcomes if o.status == "skipped")
    assert len(trained) == 1
    reg = _registry(settings)
    assert list(reg["versions"]) == [1] and reg["production"] == 1
    assert reg["runs"][DAY0].attempt == 1


def test_stale_claim_is_taken_over_and_fresh_one_is_not(sqlite_env: Env) -> None:
    settings = sqlite_env(stale_after_s=5.0)
    write_day(_logs(settings), DAY0, ROWS)
    engine = make_engine(settings.resolved_database_url)
    try:
        with session_scope(engine) as session:
            dead = cycle_runs.claim_cycle(
                session, model_name="ctr", cycle_date=DAY0, owner="crashed-host", stale_after_s=5.0
            ).run
        held = run_cycle(settings=settings, cycle_date=DAY0, actor="test")
        assert held.status == "skipped" and held.reason == "held"

        with session_scope(engine) as session:  # the crashed owner's heartbeat goes stale
            session.execute(
                update(CycleRunRow)
                .where(CycleRunRow.id == dead.id)
                .values(heartbeat_at=dead.heartbeat_at - timedelta(minutes=10))
            )
        taken = _ok(run_cycle(settings=settings, cycle_date=DAY0, actor="test"))
        assert taken.attempt == 2 and taken.version == 1
        # The crashed owner coming back cannot touch the run any more.
        with pytest.raises(ClaimLostError), session_scope(engine) as session:
            cycle_runs.heartbeat_cycle(session, run=dead)
    finally:
        engine.dispose()


# ----------------------------------------------------------------------------- failure injection
FAIL_POINTS = [
    "resolve_parent",
    "ingest",
    "fetch_priors",
    "train_candidate",
    "gate",
    "train_holdout",
    "register",
    "promote",
]


@pytest.mark.parametrize("point", FAIL_POINTS)
def test_failure_in_any_step_fails_run_and_leaves_production(
    sqlite_env: Env, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    settings = sqlite_env()
    day1 = DAY0 + timedelta(days=1)
    write_day(_logs(settings), DAY0, ROWS)
    write_day(_logs(settings), day1, ROWS)
    _ok(run_cycle(settings=settings, cycle_date=DAY0, actor="test"))
    archive_before = _files(Path(settings.resolved_archive_uri))
    artifacts_before = _files(Path(settings.resolved_artifacts_uri))

    def boom(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError(f"injected failure in {point}")

    # Fault injection: the real step is replaced by one that raises (promote: inside the one
    # register transaction, after the version row was written).
    monkeypatch.setattr(store if point == "promote" else steps, point, boom)
    outcome = run_cycle(settings=settings, cycle_date=day1, actor="test")

    assert outcome.status == "failed" and f"injected failure in {point}" in (outcome.error or "")
    reg = _registry(settings)
    assert reg["production"] == 1
    assert list(reg["versions"]) == [1], "nothing may be half-registered"
    run = reg["runs"][day1]
    assert run.status == CycleStatus.FAILED and f"injected failure in {point}" in (run.error or "")
    assert run.produced_version is None
    assert _files(Path(settings.resolved_archive_uri)) == archive_before
    if point in ("resolve_parent", "ingest", "fetch_priors", "train_candidate", "gate", "train_holdout"):
        assert _files(Path(settings.resolved_artifacts_uri)) == artifacts_before
    assert not list((settings.data_dir / "work").iterdir()), "scratch folders are removed"


def test_report_is_written_after_commit_and_its_failure_keeps_the_version(
    sqlite_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = sqlite_env()
    day1 = DAY0 + timedelta(days=1)
    write_day(_logs(settings), DAY0, ROWS)
    write_day(_logs(settings), day1, ROWS)
    _ok(run_cycle(settings=settings, cycle_date=DAY0, actor="test"))
    seen: list[Any] = []

    def report_after_commit(*, settings: Any, record: Any) -> Any:
        # The registry already holds the version the report names when the report is written.
        seen.append(_registry(settings)["production"])
        raise RuntimeError("disk full")

    monkeypatch.setattr(steps, "report", report_after_commit)
    outcome = _ok(run_cycle(settings=settings, cycle_date=day1, actor="test"))
    assert seen == [2] and outcome.version == 2 and outcome.report is None
    assert _registry(settings)["runs"][day1].status == CycleStatus.SUCCEEDED


def test_retry_after_transient_failure_logs_date_and_attempt(
    sqlite_env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = sqlite_env(cycle_attempts=2, cycle_backoff_s=0.0)
    write_day(_logs(settings), DAY0, ROWS)
    real_train = steps.train_candidate
    calls = {"n": 0}

    def flaky(ctx: steps.CycleContext, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("transient")
        return real_train(ctx, **kw)

    monkeypatch.setattr(steps, "train_candidate", flaky)
    with caplog.at_level(logging.INFO, logger="reloop_service.cycle"):
        outcome = _ok(run_cycle(settings=settings, cycle_date=DAY0, actor="test"))
    assert outcome.attempt == 2 and outcome.version == 1
    text = caplog.text
    assert f"[cycle {DAY0} attempt 1] failed: step train: RuntimeError: transient" in text
    assert f"[cycle {DAY0} attempt 2] succeeded" in text
    cycle_records = [r for r in caplog.records if r.name == "reloop_service.cycle"]
    assert cycle_records and all(getattr(r, "cycle_date", None) == DAY0.isoformat() for r in cycle_records)
    run = _registry(settings)["runs"][DAY0]
    assert run.attempt == 2 and run.details.model_extra["previous_attempt"]["error"].endswith("transient")


def test_missing_day_is_skipped_with_the_reason_and_can_run_when_it_arrives(sqlite_env: Env) -> None:
    settings = sqlite_env(cycle_attempts=3)
    outcome = run_cycle(settings=settings, cycle_date=DAY0, actor="test")
    assert outcome.status == "skipped" and outcome.reason == "no_data" and outcome.attempt == 1
    assert "no click logs for 2024-03-01" in (outcome.error or "")
    reg = _registry(settings)
    assert reg["production"] is None and reg["versions"] == {}
    assert reg["runs"][DAY0].status == CycleStatus.SKIPPED and "no_data" in (reg["runs"][DAY0].error or "")
    # The partition arrives late: the skipped date is claimed again without --force.
    write_day(_logs(settings), DAY0, ROWS)
    late = _ok(run_cycle(settings=settings, cycle_date=DAY0, actor="test"))
    assert late.attempt == 2 and late.version == 1


@pytest.mark.parametrize(
    ("rows", "ctr", "code", "names"),
    [
        (40, 0.3, "too_few_rows", "RELOOP_MIN_DAY_ROWS=100"),
        (400, 0.0, "too_few_positives", "RELOOP_MIN_POSITIVES=5"),
        (400, 1.0, "too_few_negatives", "RELOOP_MIN_NEGATIVES=5"),
    ],
)
def test_a_tiny_or_one_label_day_is_skipped_and_production_stays(
    sqlite_env: Env, rows: int, ctr: float, code: str, names: str
) -> None:
    settings = sqlite_env()
    write_day(_logs(settings), DAY0, ROWS)
    _ok(run_cycle(settings=settings, cycle_date=DAY0, actor="test"))
    day1 = DAY0 + timedelta(days=1)
    table = write_day(_logs(settings), day1, rows)
    labels = np.zeros(rows, dtype=np.int64)
    labels[: round(rows * ctr)] = 1
    path = next((Path(settings.resolved_logs_uri) / f"dt={day1.isoformat()}").glob("*.parquet"))
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels)), path)
    artifacts_before = _files(Path(settings.resolved_artifacts_uri))
    outcome = run_cycle(settings=settings, cycle_date=day1, actor="test")
    assert outcome.status == "skipped" and outcome.reason == code, outcome.error
    assert names in (outcome.error or "")
    reg = _registry(settings)
    assert reg["production"] == 1 and list(reg["versions"]) == [1]
    assert reg["runs"][day1].status == CycleStatus.SKIPPED
    assert _files(Path(settings.resolved_artifacts_uri)) == artifacts_before


# ------------------------------------------------------------------------------------ the gate
def test_gate_refuses_a_candidate_no_better_than_the_constant_predictor(sqlite_env: Env) -> None:
    """Coin-flip labels carry nothing to learn: the candidate cannot beat the constant by the margin."""
    settings = sqlite_env(gate_min_gain_over_constant=0.005)
    table = write_day(_logs(settings), DAY0, ROWS)
    noise = np.random.default_rng(3).random(ROWS) < 0.3
    path = next((Path(settings.resolved_logs_uri) / f"dt={DAY0.isoformat()}").glob("*.parquet"))
    pq.write_table(
        table.set_column(table.schema.get_field_index("label"), "label", pa.array(noise.astype(np.int64))),
        path,
    )
    outcome = _ok(run_cycle(settings=settings, cycle_date=DAY0, actor="test"))
    verdict = outcome.verdict
    assert verdict is not None and verdict.constant is not None
    assert outcome.decision == "rejected" and verdict.failed_rules == ["beats_constant"]
    rule = verdict.rules[0]
    assert rule.value == verdict.constant.logloss - verdict.candidate.logloss <= 0.005
    reg = _registry(settings)
    assert reg["production"] is None and reg["versions"][1].status == VersionStatus.REJECTED


def test_gate_rejection_keeps_production_and_operator_can_override(sqlite_env: Env) -> None:
    settings = sqlite_env()
    day1 = DAY0 + timedelta(days=1)
    write_day(_logs(settings), DAY0, ROWS)
    write_day(_logs(settings), day1, ROWS)
    _ok(run_cycle(settings=settings, cycle_date=DAY0, actor="test"))
    strict = settings.model_copy(update={"gate_auc_floor": 0.999, "gate_max_logloss_rise": -1.0})
    outcome = _ok(run_cycle(settings=strict, cycle_date=day1, actor="test"))
    assert outcome.decision == "rejected" and outcome.version == 2
    verdict = outcome.verdict
    assert verdict is not None
    assert not verdict.passed and set(verdict.failed_rules) == {"auc_floor", "max_logloss_rise"}
    floor = next(r for r in verdict.rules if r.name == "auc_floor")
    assert floor.threshold == 0.999 and floor.value == verdict.candidate.auc
    reg = _registry(settings)
    assert reg["production"] == 1 and reg["versions"][2].status == VersionStatus.REJECTED
    assert reg["versions"][2].gate_verdict["failed_rules"] == verdict.failed_rules

    engine = make_engine(settings.resolved_database_url)
    try:
        with session_scope(engine) as session:
            store.promote(
                session,
                model_name="ctr",
                version=2,
                actor="alice",
                reason="override: holdout too small",
                expected_current=1,
            )
        with session_scope(engine, readonly=True) as session:
            events = store.list_events(session, model_name="ctr", version=2)
    finally:
        engine.dispose()
    assert _registry(settings)["production"] == 2
    promoted = next(e for e in events if e.kind.value == "promoted")
    assert promoted.details["override_rejection"] and promoted.actor == "alice"


def test_gate_passes_without_auto_promote_registers_only(sqlite_env: Env) -> None:
    settings = sqlite_env(auto_promote=False)
    write_day(_logs(settings), DAY0, ROWS)
    outcome = _ok(run_cycle(settings=settings, cycle_date=DAY0, actor="test"))
    assert outcome.decision == "registered"
    reg = _registry(settings)
    assert reg["production"] is None and reg["versions"][1].status == VersionStatus.CANDIDATE


# ------------------------------------------------------------------------------------ priors
def _archive(
    settings: Settings, ids: list[str], ctr: np.ndarray, version: int, rows: pa.Table | None = None
) -> None:
    """Archive predictions as serving does: with ``rows``, their features as the transform's columns
    (struct parts); without, as JSON mappings (the layout of parts written before columnar archiving)."""
    from reloop_service.data.archive import FeatureColumns, PredictionArchive, PredictionRows, now_us
    from reloop_service.data.spec import default_spec
    from reloop_service.data.transforms import transform_record_columns

    features: Any = [{}] * len(ids)
    if rows is not None:
        spec = default_spec()
        spec = spec.with_numeric_stats({f.name: (0.0, 1.0) for f in spec.numeric})
        _, _, read = transform_record_columns(spec, rows.to_pylist())
        features = FeatureColumns(spec, read.n, read.hashes, read.valid, read.numeric, read.multi_lengths)
    with PredictionArchive(settings.resolved_archive_uri, replica_id="test", start=False) as archive:
        archive.append(
            PredictionRows(
                impression_ids=ids, ctr=ctr, model_version=version, ts_us=now_us(), features=features
            )
        )


@pytest.mark.parametrize(
    ("source", "expect"),
    [
        ("archive_then_recompute", ("half", "rest", 0)),
        ("archive", ("half", 0, "rest")),
        ("recompute", (0, "all", 0)),
    ],
)
def test_prior_join_with_partly_missing_archive(
    sqlite_env: Env, source: str, expect: tuple[Any, ...]
) -> None:
    settings = sqlite_env(prior_source=source)
    day1 = DAY0 + timedelta(days=1)
    write_day(_logs(settings), DAY0, ROWS)
    table = write_day(_logs(settings), day1, ROWS)
    _ok(run_cycle(settings=settings, cycle_date=DAY0, actor="test"))
    ids = table.column("impression_id").to_pylist()
    half = ids[: ROWS // 2]
    marked = np.full(len(half), 0.123456)
    # served by the parent: one part in the old JSON layout, one columnar, in one partition
    quarter = ROWS // 4
    _archive(settings, half[:quarter], marked[:quarter], version=1)
    _archive(
        settings, half[quarter:], marked[quarter:], version=1, rows=table.slice(quarter, len(half) - quarter)
    )
    from datetime import UTC, datetime

    from reloop_service.data.archive import list_parts

    today = datetime.now(UTC).date()  # and the day before: the parts may have been written before midnight
    days = (today - timedelta(days=1), today)
    parts = [p for d in days for p in list_parts(settings.resolved_archive_uri, version=1, day=d)]
    assert sorted(pa.types.is_struct(pq.read_schema(p).field("features").type) for p in parts) == [
        False,
        True,
    ]
    _archive(settings, ids[ROWS // 2 : ROWS // 2 + 100], np.full(100, 0.5), version=99)  # another version
    seen: dict[str, Any] = {}

    def inspect(prepared: steps.PreparedDay) -> dict[str, Any]:
        for part in (prepared.path, prepared.holdout_path):
            staged = pq.read_table(part, columns=["impression_id", PRIOR_COLUMN])
            seen.update(zip(staged.column(0).to_pylist(), staged.column(1).to_pylist(), strict=True))
        return {}

    outcome = _ok(run_cycle(settings=settings, cycle_date=day1, actor="test", extra=inspect))
    cov = outcome.record.coverage
    sizes = {"half": ROWS // 2, "rest": ROWS - ROWS // 2, "all": ROWS, 0: 0}
    assert cov is not None
    assert (cov.archived, cov.recomputed, cov.missing) == tuple(sizes[e] for e in expect)
    assert cov.rows == ROWS and cov.parent_version == 1
    if source != "recompute":
        assert all(seen[i] == pytest.approx(0.123456) for i in half), "archived priors are used as served"
    other = ids[ROWS // 2]
    assert seen[other] != 0.5, "another version's prediction is never the parent's prior"
    if source == "archive":
        assert seen[other] is None


def test_reloop_train_and_the_cycle_train_the_same_model(sqlite_env: Env, tmp_path: Path) -> None:
    """One recipe: the same settings, day and seed give the same candidate by hand and in the cycle."""
    from typer.testing import CliRunner

    from reloop_service.cli import app
    from reloop_service.training.checkpoint import load_checkpoint

    settings = sqlite_env()
    write_day(_logs(settings), DAY0, 3000)
    outcome = _ok(run_cycle(settings=settings, cycle_date=DAY0, actor="test"))
    env = {
        "RELOOP_EMBEDDING_DIM": str(settings.embedding_dim),
        "RELOOP_MLP_HIDDEN": json.dumps(list(settings.mlp_hidden)),
        "RELOOP_LEARNING_RATE": str(settings.learning_rate),
        "RELOOP_BATCH_SIZE": str(settings.batch_size),
        "RELOOP_THREADS": "1",
    }
    out = tmp_path / "by-hand.ckpt"
    args = ["train", "--logs", _logs(settings).as_posix(), "--date", DAY0.isoformat(), "--out", str(out)]
    res = CliRunner().invoke(app, [*args, "--spec", str(settings.spec_path), "--loss", "bce"], env=env)
    assert res.exit_code == 0, res.output
    by_hand = load_checkpoint(str(out)).metrics
    assert outcome.verdict is not None and outcome.record.train is not None
    candidate = outcome.verdict.candidate
    assert by_hand["rows"] == candidate.rows == outcome.record.train.holdout_rows
    assert by_hand["auc"] == pytest.approx(candidate.auc, abs=1e-9)
    assert by_hand["logloss"] == pytest.approx(candidate.logloss, abs=1e-9)


def test_cli_exit_code_says_the_day_was_skipped(sqlite_env: Env) -> None:
    from typer.testing import CliRunner

    from reloop_service.cli import app

    settings = sqlite_env()
    env = {
        "RELOOP_DATA_DIR": str(settings.data_dir),
        "RELOOP_DATABASE_URL": settings.resolved_database_url,
        "RELOOP_SPEC_PATH": str(settings.spec_path),
    }
    res = CliRunner().invoke(app, ["cycle", "run", "--date", DAY0.isoformat()], env=env)
    assert res.exit_code == 4, res.output
    assert "skipped" in res.output and "no click logs" in res.output
