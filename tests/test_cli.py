"""The ``reloop`` command line as a user meets it: help text, choices, errors naming the setting."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, get_args

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from reloop_service.cli import HEAVY_MODULES, app

ENV = {k: v for k, v in os.environ.items() if not k.startswith("RELOOP_")}


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, cmd in getattr(group, "commands", {}).items():
        sub = (*path, name)
        out.append(sub)
        out.extend(_commands(cmd, sub))
    return out


def test_every_help_shows_flags_as_flags_and_choices_as_choices() -> None:
    runner = CliRunner()
    paths = _commands(get_command(app))
    assert ("cycle", "backfill") in paths and ("versions", "show") in paths
    for path in [(), *paths]:
        res = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert res.exit_code == 0, (path, res.output)
        assert "<bool>" not in res.output, path
    helps = {
        ("train",): ["bce|label_smoothing|distill|reloop", "dnn|deepfm|dcnv2|lr"],
        ("demo",): ["bce|label_smoothing|distill|reloop"],
        ("cycle", "backfill"): ["none|failed|all", "--logs"],
        ("cycle", "run"): ["--logs", "--strict-spec", "YYYY-MM-DD"],
        ("versions", "list"): ["candidate|production|archived|rejected|failed"],
        ("replay", "synthetic"): ["dnn|deepfm|dcnv2"],
    }
    for path, wanted in helps.items():
        text = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"}).output
        for w in wanted:
            assert w in text, (path, w)


def test_choice_lists_match_the_settings_and_the_runner() -> None:
    from reloop_service.clitools import LossName, ModelName
    from reloop_service.config import Settings
    from reloop_service.replay.commands import STRATEGIES
    from reloop_service.replay.runner import STRATEGIES as RUNNER_STRATEGIES

    assert STRATEGIES == RUNNER_STRATEGIES
    assert set(get_args(LossName)) == set(get_args(Settings.model_fields["loss"].annotation))
    assert set(get_args(ModelName)) == set(get_args(Settings.model_fields["model"].annotation))


def test_help_imports_no_heavy_module() -> None:
    probe = f"import sys, reloop_service.cli; print([m for m in {HEAVY_MODULES!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], env=ENV, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    shown = subprocess.run(
        [sys.executable, "-m", "reloop_service.cli", "--help"], env=ENV, capture_output=True, text=True
    )
    assert shown.returncode == 0 and "cycle" in shown.stdout


def test_commands_load_torch_only_when_they_need_a_model() -> None:
    """torch (a second and more to import) stays out of `reloop simulate` and `reloop logs check`, and out
    of a `reloop cycle run` or scheduler until a step trains or loads a model: a run held by another, or a
    date already done, exits without it."""
    modules = (
        "reloop_service.data.simulator",
        "reloop_service.data.ingest",
        "reloop_service.data.transforms",
        "reloop_service.cycle.run",
        "reloop_service.cycle.commands",
        "reloop_service.cycle.scheduler",
    )
    probe = f"import sys; [__import__(m) for m in {modules!r}]; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], env=ENV, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("env", "wanted"),
    [
        ({"RELOOP_LOSS": "relop"}, "RELOOP_LOSS='relop': allowed: bce, label_smoothing, distill, reloop"),
        ({"RELOOP_EPOCHS": "many"}, "RELOOP_EPOCHS='many'"),
        ({"RELOOP_HOLDOUT_FRACTION": "2"}, "RELOOP_HOLDOUT_FRACTION='2'"),
    ],
)
def test_an_invalid_setting_is_one_line_naming_it(tmp_path: Any, env: dict[str, str], wanted: str) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "reloop_service.cli", "cycle", "runs"],
        env={**ENV, **env, "RELOOP_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {wanted}"] if "allowed" in wanted else len(lines) == 1, res.stderr
    assert wanted in lines[0] and "Traceback" not in res.stderr


def test_a_bad_flag_value_is_named_as_the_flag(tmp_path: Any) -> None:
    from reloop_service.clitools import load_settings

    with pytest.raises(typer.Exit):
        load_settings(tmp_path, api_port=-5, max_batch=0)


def test_commands_refuse_a_missing_registry_without_creating_it(tmp_path: Any) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "reloop_service.cli", "versions", "list"],
        env={**ENV, "RELOOP_DATA_DIR": str(tmp_path / "data")},
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1
    assert "does not exist" in res.stderr and "reloop db upgrade" in res.stderr
    assert not (tmp_path / "data" / "registry.db").exists()


def test_bench_cli_prints_the_help_time() -> None:
    res = CliRunner().invoke(app, ["bench", "cli", "--runs", "1"])
    assert res.exit_code == 0, res.output
    assert "reloop --help: median" in res.output and "heavy modules imported by the CLI: none" in res.output


def test_repeated_warnings_are_collapsed() -> None:
    import logging

    from reloop_service.clitools import _Collapse

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = logging.getLogger("reloop-test-collapse")
    logger.propagate = False
    logger.setLevel(logging.INFO)  # not the root's level, which depends on what ran before in this process
    handler = Keep()
    collapse = _Collapse()
    handler.addFilter(collapse)
    logger.addHandler(handler)
    try:
        for day in range(931):  # what `reloop scheduler` printed on an old registry
            logger.warning("cycle %s is missing", day)
        logger.warning("another kind")
        logger.info("info is never collapsed")
        logger.info("info is never collapsed")
    finally:
        logger.removeHandler(handler)
    assert seen[:3] == ["cycle 0 is missing", "cycle 1 is missing", "cycle 2 is missing"]
    assert seen[3:] == ["another kind", "info is never collapsed", "info is never collapsed"]
    assert collapse.summary() == ["928 more warning(s) like this one were not shown: cycle 930 is missing"]


def test_serve_refuses_a_missing_registry_without_creating_it(tmp_path: Any) -> None:
    """What `reloop serve` did after `reloop demo`: say where it looked, and leave no empty registry.db."""
    res = subprocess.run(
        [sys.executable, "-m", "reloop_service.cli", "serve", "--port", "1"],
        env={**ENV, "RELOOP_DATA_DIR": str(tmp_path / "data")},
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1, res.stderr
    assert "registry.db does not exist" in res.stderr and "reloop db upgrade" in res.stderr
    assert str(tmp_path / "data") in res.stderr  # the data folder it resolved
    assert not (tmp_path / "data" / "registry.db").exists()
