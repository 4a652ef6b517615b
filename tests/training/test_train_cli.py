"""``reloop train`` end to end: simulator logs on disk -> ingestion -> training -> checkpoint file."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from typer.testing import CliRunner

from reloop_service.cli import app
from reloop_service.data.simulator import ClickSimulator, SimulatorConfig
from reloop_service.data.split import holdout_mask
from reloop_service.training.checkpoint import load_checkpoint
from reloop_service.training.predict import Predictor

D1, D2 = date(2024, 1, 1), date(2024, 1, 2)
ARGS = [
    *("--model-args", '{"hidden": [32, 16], "embedding_dim": 8}'),
    *("--batch-size", "256", "--epochs", "2", "--lr", "3e-3", "--sparse-lr", "5e-2", "--threads", "1"),
]


def _simulate(root: Path) -> ClickSimulator:
    sim = ClickSimulator(seed=1, config=SimulatorConfig(impressions_per_day=10000, n_users=2000, n_items=500))
    for day in (D1, D2):
        table, _ = sim.simulate_day(day)
        sim.write_day(str(root), day, table)
    return sim


def test_train_then_warm_start_from_the_cli(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    sim = _simulate(logs)
    runner = CliRunner()
    first = tmp_path / "day1.ckpt"
    res = runner.invoke(
        app,
        [
            "train",
            "--logs",
            str(logs),
            "--date",
            "2024-01-01",
            "--out",
            str(first),
            "--loss",
            "reloop",
            *ARGS,
        ],
    )
    assert res.exit_code == 0, res.output
    assert "trains as BCE" in res.output  # no prior version yet
    assert "AUC" in res.output and "calibration" in res.output
    ckpt = load_checkpoint(str(first))
    assert ckpt.feature_spec().is_fitted  # numeric statistics fitted on the first training
    # The cycle's split: a 10% hash sample of impression ids, not the latest rows.
    day1 = pq.read_table(next((logs / "dt=2024-01-01").glob("*.parquet")))
    held = holdout_mask(day1.column("impression_id"), 0.1)
    assert ckpt.metrics["rows"] == int(held.sum())
    assert 800 < held.sum() < 1200
    assert ckpt.metrics["auc"] > 0.65  # the simulator's Bayes AUC is about 0.8
    assert ckpt.last_day == D1

    second = tmp_path / "day2.ckpt"
    res = runner.invoke(
        app,
        [
            "train",
            "--logs",
            str(logs),
            "--date",
            "2024-01-02",
            "--from-checkpoint",
            str(first),
            "--out",
            str(second),
            "--json",
            *ARGS,
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)  # stderr says where the data lives
    assert summary["prior_source"] == "checkpoint"
    assert summary["prior_coverage"] == 1.0
    warm = load_checkpoint(str(second))
    assert (warm.first_day, warm.last_day) == (D1, D2)
    assert warm.feature_spec().fingerprint() == ckpt.feature_spec().fingerprint()  # stats stay frozen
    # The written checkpoint scores the raw day without its config.
    day2 = pq.read_table(next((logs / "dt=2024-01-02").glob("*.parquet")))
    preds = Predictor(warm).predict_batch(day2)
    assert preds.shape == (day2.num_rows,) and np.all((preds > 0) & (preds < 1))
    assert sim is not None


def test_train_cli_reports_missing_day_and_bad_flags(tmp_path: Path) -> None:
    runner = CliRunner()
    out = str(tmp_path / "x.ckpt")
    res = runner.invoke(app, ["train", "--logs", str(tmp_path), "--date", "2024-01-05", "--out", out])
    assert res.exit_code == 1
    assert "2024-01-05" in res.output
    res = runner.invoke(app, ["train", "--logs", str(tmp_path), "--date", "05/01/2024", "--out", out])
    assert res.exit_code == 1 and "YYYY-MM-DD" in res.output
    res = runner.invoke(
        app, ["train", "--logs", str(tmp_path), "--date", "2024-01-05", "--out", out, "--loss", "focal"]
    )
    # a choice: the usage error names the flag and the allowed values
    assert res.exit_code == 2 and "--loss" in res.output and "label_smoothing" in res.output
    assert not Path(out).exists()
