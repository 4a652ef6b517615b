from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

import reloop_service.data.commands  # noqa: F401  (registers the commands)
from reloop_service.clitools import app

runner = CliRunner()


def test_simulate_then_check(tmp_path: Path) -> None:
    logs = str(tmp_path / "logs")
    out = runner.invoke(
        app,
        [
            "simulate",
            "--out",
            logs,
            "--days",
            "2",
            "--start",
            "2024-02-01",
            "--impressions",
            "300",
            "--seed",
            "9",
            "--json",
        ],
    )
    assert out.exit_code == 0, out.output
    days = json.loads(out.stdout)
    assert [d["date"] for d in days] == ["2024-02-01", "2024-02-02"]
    assert all(d["rows"] == 300 and 0 < d["bayes_logloss"] < 1 for d in days)
    assert (tmp_path / "logs" / "dt=2024-02-02" / "part-00000.parquet").exists()

    out = runner.invoke(
        app, ["logs", "check", "--logs", logs, "--date", "2024-02-01", "--days", "2", "--json"]
    )
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert report["rows_read"] == 600 and report["rows_valid"] == 600 and report["quarantined"] == {}

    # corrupt a row: the human report names the reason and the quarantine location
    path = tmp_path / "logs" / "dt=2024-02-01" / "part-00000.parquet"
    table = pq.read_table(path)
    labels = table.column("label").to_pylist()
    labels[0] = 3
    pq.write_table(
        table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels, pa.int8())), path
    )
    out = runner.invoke(app, ["logs", "check", "--logs", logs, "--date", "2024-02-01"])
    assert out.exit_code == 0, out.output
    assert "bad_label" in out.output and "_quarantine" in out.output.replace("\n", "")


def test_check_errors_exit_non_zero_with_the_reason(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    out = runner.invoke(app, ["logs", "check", "--logs", str(logs), "--date", "2024-02-01"])
    assert out.exit_code == 3 and "empty day" in out.output
    (logs / "dt=2024-02-01").mkdir(parents=True)
    pq.write_table(pa.table({"impression_id": ["a"]}), logs / "dt=2024-02-01" / "x.parquet")
    out = runner.invoke(app, ["logs", "check", "--logs", str(logs), "--date", "2024-02-01"])
    assert out.exit_code == 2 and "x.parquet" in out.output.replace("\n", "") and "'label'" in out.output
    out = runner.invoke(app, ["logs", "check", "--logs", str(logs), "--date", "Feb 1st"])
    assert out.exit_code == 1 and "--date" in out.output
    bad_spec = tmp_path / "spec.toml"
    bad_spec.write_text('label = "y"\n')
    out = runner.invoke(
        app, ["logs", "check", "--logs", str(logs), "--date", "2024-02-01", "--spec", str(bad_spec)]
    )
    assert out.exit_code == 1 and "spec.toml" in out.output.replace("\n", "")
