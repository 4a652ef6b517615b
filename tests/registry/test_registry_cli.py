"""The registry CLI through Typer's runner: db, versions, promote, rollback, history, with --json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

import reloop_service.registry.commands  # noqa: F401  (registers the registry commands)
from reloop_service.clitools import app
from reloop_service.registry import db
from reloop_service.registry.artifacts import ArtifactStore

from . import registry_tools as rt


@pytest.fixture
def artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ArtifactStore:
    monkeypatch.setenv("RELOOP_ARTIFACTS_URI", str(tmp_path / "artifacts"))
    return ArtifactStore(str(tmp_path / "artifacts"))


@pytest.fixture
def cli(db_url: str, artifacts: ArtifactStore) -> Any:
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        return runner.invoke(app, [*args, "--database-url", db_url], catch_exceptions=False)

    return invoke


def _json(result: Any) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_every_command_refuses_a_database_not_at_head(cli: Any) -> None:
    current = _json(cli("db", "current", "--json"))
    assert current["revision"] is None and current["at_head"] is False
    for args in (
        ("versions", "list"),
        ("versions", "show", "1"),
        ("promote", "1", "--reason", "x"),
        ("rollback", "--reason", "x"),
        ("history",),
    ):
        result = cli(*args)
        assert result.exit_code == 1, args
        assert "reloop db upgrade" in " ".join(result.stderr.split()), args
    upgraded = _json(cli("db", "upgrade", "--json"))
    assert upgraded["revision"] == db.head_revision()
    assert _json(cli("db", "current", "--json"))["at_head"] is True
    assert _json(cli("db", "downgrade", "--revision", "base", "--json"))["revision"] is None


def test_promote_rollback_history_and_show(
    cli: Any, migrated_engine: Engine, artifacts: ArtifactStore
) -> None:
    rt.register(migrated_engine, metrics={"auc": 0.7}, artifacts=artifacts)
    rt.register(migrated_engine, parent=1, metrics={"auc": 0.72}, artifacts=artifacts)
    assert (
        _json(cli("promote", "1", "--reason", "first", "--actor", "alice", "--json"))["version"]["version"]
        == 1
    )
    prod = _json(cli("promote", "2", "--reason", "better auc", "--actor", "bob", "--json"))
    assert prod["version"]["version"] == 2 and prod["updated_by"] == "bob"
    listed = _json(cli("versions", "list", "--json"))
    assert [(v["version"], v["status"]) for v in listed] == [(2, "production"), (1, "archived")]
    assert [v["version"] for v in _json(cli("versions", "list", "--status", "archived", "--json"))] == [1]
    shown = _json(cli("versions", "show", "2", "--json"))
    assert [p["version"] for p in shown["parents"]] == [1] and shown["version"]["metrics"] == {"auc": 0.72}
    assert {e["kind"] for e in shown["events"]} == {"registered", "promoted"}

    back = _json(cli("rollback", "--reason", "latency regression", "--actor", "carol", "--json"))
    assert back["version"]["version"] == 1
    history = _json(cli("history", "--json"))
    assert [(e["kind"], e["from_version"], e["to_version"], e["actor"]) for e in history[:3]] == [
        ("rolled_back", 2, 1, "carol"),
        ("promoted", 1, 2, "bob"),
        ("promoted", None, 1, "alice"),
    ]
    assert history[0]["reason"] == "latency regression"
    # Rich tables render without --json.
    table = cli("history")
    assert table.exit_code == 0 and "rolled_back" in table.stdout
    shown_table = cli("versions", "show", "2")
    assert shown_table.exit_code == 0 and "{'" not in shown_table.stdout  # tables, not Python dicts
    assert "sha256" in shown_table.stdout and "0.7200" in shown_table.stdout
    # promoting what is already in production is a no-op that says so (scripts can re-run it)
    again = cli("promote", "1", "--reason", "again")
    assert again.exit_code == 0 and "already in production" in again.stdout


def test_cli_errors_are_one_clear_line(cli: Any, migrated_engine: Engine) -> None:
    rt.register(migrated_engine)
    missing = cli("promote", "9", "--reason", "x")
    assert missing.exit_code == 1 and "no version 9" in missing.stderr
    nothing = cli("rollback", "--reason", "x")
    assert nothing.exit_code == 1 and "no production version" in nothing.stderr
    bad_status = cli("versions", "list", "--status", "bogus")
    # a choice: the usage error names the flag and the allowed values
    assert bad_status.exit_code == 2 and "--status" in bad_status.stderr and "candidate" in bad_status.stderr
    assert "Traceback" not in missing.output + nothing.output


def test_promote_and_rollback_refuse_an_artifact_that_does_not_load(
    cli: Any, migrated_engine: Engine, artifacts: ArtifactStore
) -> None:
    rt.register(migrated_engine, artifacts=artifacts)
    bad = rt.register(migrated_engine, artifacts=artifacts)
    assert cli("promote", "1", "--reason", "first").exit_code == 0
    path = Path(bad.artifact.uri)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    refused = cli("promote", "2", "--reason", "x")
    assert (
        refused.exit_code == 1 and "version 2 cannot be served: artifact checksum mismatch" in refused.stderr
    )
    assert rt.production_version(migrated_engine) == 1
    refused = cli("rollback", "--reason", "x", "--to", "2")
    assert refused.exit_code == 1 and "artifact checksum mismatch" in refused.stderr
    assert rt.production_version(migrated_engine) == 1
