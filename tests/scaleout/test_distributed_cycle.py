"""One real cycle trained by 2 CPU ranks under torchrun (gloo), against the same cycle on one process.

Two data dirs get the same simulated days and the same first (single-process) cycle, so they hold
the same production version (the second is a copy of the first after that cycle). Day 2 is then
trained warm-started in-process in one dir and by ``reloop cycle run --nproc 2`` (torchrun) in the
other. The ranks must end bit-identical, equal to the artifact rank 0 registered, and the gate
metrics must be close to the single-process run's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from reloop_service.config import Settings
from reloop_service.data.simulator import ClickSimulator, SimulatorConfig

DAY0 = date(2024, 1, 1)
DAY1 = date(2024, 1, 2)
ROWS = 2400


def env_for(root: Path) -> dict[str, str]:
    """The ``RELOOP_`` settings of one isolated installation (tiny model, one thread per rank)."""
    return {
        "RELOOP_DATA_DIR": str(root),
        "RELOOP_DATABASE_URL": f"sqlite:///{root / 'registry.db'}",
        "RELOOP_EMBEDDING_DIM": "8",
        "RELOOP_MLP_HIDDEN": "[32, 16]",
        "RELOOP_BATCH_SIZE": "128",
        "RELOOP_LEARNING_RATE": "0.003",
        "RELOOP_THREADS": "1",
        "RELOOP_CYCLE_ATTEMPTS": "1",
        "RELOOP_CYCLE_BACKOFF_S": "0",
        "RELOOP_HEARTBEAT_S": "0.5",
        "RELOOP_GATE_MAX_AUC_DROP": "0.5",
        "RELOOP_GATE_MAX_LOGLOSS_RISE": "0.5",
        # The registered artifact is then exactly what the ranks trained (no holdout pass on rank 0).
        "RELOOP_TRAIN_ON_HOLDOUT": "false",
    }


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings read from ``env`` exactly as a subprocess with that environment reads them."""
    with monkeypatch.context() as m:
        for key, value in env.items():
            m.setenv(key, value)
        return Settings()


def setup_installation(root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Migrate, write two simulated days, and run day 0 in-process (cold start, version 1)."""
    from reloop_service.cycle.run import run_cycle
    from reloop_service.registry.db import upgrade

    env = env_for(root)
    settings = settings_from(env, monkeypatch)
    upgrade(settings.resolved_database_url)
    sim = ClickSimulator(
        7, start=DAY0, config=SimulatorConfig(impressions_per_day=ROWS, n_users=400, n_items=150)
    )
    for day in (DAY0, DAY1):
        table, _ = sim.simulate_day(day)
        sim.write_day(settings.resolved_logs_uri, day, table)
    outcome = run_cycle(settings=settings, cycle_date=DAY0, actor="test")
    assert outcome.status == "succeeded" and outcome.version == 1, outcome
    return env


def load_version(env: dict[str, str], version: int) -> Any:
    from reloop_service.registry.artifacts import ArtifactStore
    from reloop_service.registry.db import make_engine, session_scope
    from reloop_service.registry.store import get_version
    from reloop_service.training.checkpoint import checkpoint_from_bytes

    engine = make_engine(env["RELOOP_DATABASE_URL"])
    try:
        with session_scope(engine) as session:
            info = get_version(session, model_name="ctr", version=version)
    finally:
        engine.dispose()
    store = ArtifactStore(str(Path(env["RELOOP_DATA_DIR"]) / "artifacts"))
    return info, checkpoint_from_bytes(store.get(info.artifact))


@pytest.mark.slow
def test_two_rank_cycle_matches_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from reloop_service.cycle.run import run_cycle
    from reloop_service.training.distributed import state_hash

    single_env = setup_installation(tmp_path / "single", monkeypatch)
    # The same state for the DDP run: a copy of the installation after day 0 (its registry still
    # points at day 0's artifact in the first copy, which is content-addressed and read-only here).
    shutil.copytree(tmp_path / "single", tmp_path / "ddp")
    ddp_env = env_for(tmp_path / "ddp")

    # Day 1 on one process.
    single = run_cycle(settings=settings_from(single_env, monkeypatch), cycle_date=DAY1, actor="test")
    assert single.status == "succeeded" and single.version == 2, single
    assert single.verdict is not None
    single_metrics = single.verdict.candidate.model_dump()

    # Day 1 on two ranks, through the CLI (torchrun --standalone --nproc-per-node 2).
    env = {**os.environ, **ddp_env, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "reloop_service.cli",
            "cycle",
            "run",
            "--date",
            DAY1.isoformat(),
            "--nproc",
            "2",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert summary["status"] == "succeeded" and summary["version"] == 2, summary
    assert summary["world_size"] == 2

    # Both ranks trained, on disjoint shards that cover the staged day, in lockstep.
    ranks = summary["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    shards = [{tuple(g) for g in r["row_groups"]} for r in ranks]
    assert shards[0] and shards[1] and shards[0].isdisjoint(shards[1])
    # Identical parameters on every rank, and exactly what rank 0 registered.
    assert ranks[0]["state_sha256"] == ranks[1]["state_sha256"]
    info, checkpoint = load_version(ddp_env, 2)
    assert state_hash(checkpoint.state_dict) == ranks[0]["state_sha256"]
    assert info.parent_version == 1

    # Metrics close to the single-process run on the same data (same holdout, same parent).
    ddp_metrics = summary["record"]["gate"]["candidate"]
    # RELOOP_BATCH_SIZE is the global batch (each rank takes its share), so the optimisation is
    # nearly the same as in one process; only the summation order and shard boundaries differ.
    assert abs(ddp_metrics["auc"] - single_metrics["auc"]) < 0.02, (ddp_metrics, single_metrics)
    assert abs(ddp_metrics["logloss"] - single_metrics["logloss"]) < 0.01, (ddp_metrics, single_metrics)
    assert abs(ddp_metrics["calibration"] - single_metrics["calibration"]) < 0.1, (
        ddp_metrics,
        single_metrics,
    )
    assert ddp_metrics["auc"] > 0.55 and single_metrics["auc"] > 0.55  # both learned something
