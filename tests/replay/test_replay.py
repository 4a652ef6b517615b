"""A small replay on generated click logs (project Parquet layout), end to end through the real cycle."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from reloop_service.cli import app
from reloop_service.data.archive import read_predictions
from reloop_service.data.spec import CategoricalField, FeatureSpec, MultiCategoricalField
from reloop_service.registry import store
from reloop_service.registry.db import make_engine, session_scope
from reloop_service.replay.movielens import MovieLensError, movielens_table
from reloop_service.replay.runner import (
    ReplayConfig,
    RunSpec,
    SplitProtocol,
    StrategyConfig,
    run_many,
    spec_toml,
)
from reloop_service.replay.sources import parquet_data
from reloop_service.replay.summary import summarize, write_outputs
from reloop_service.training.losses import resolve_params

torch.set_num_threads(1)

START = date(2024, 3, 1)
DAYS = 6
ROWS = 160
WARMUP = 2
SPEC = FeatureSpec(
    label="label",
    impression_id="impression_id",
    event_time="event_time",
    categorical=(CategoricalField("user", 64), CategoricalField("item", 64)),
    multi=(MultiCategoricalField("tags", 16, 3),),
)


def write_logs(root: Path) -> None:
    """DAYS partitions of ROWS impressions; clicks depend on the user and the item (a learnable signal)."""
    rng = np.random.default_rng(7)
    for d in range(DAYS):
        day = START + timedelta(days=d)
        users = rng.integers(0, 30, ROWS)
        items = rng.integers(0, 20, ROWS)
        p = 1 / (1 + np.exp(-(np.where(users % 3 == 0, 1.5, -1.0) + np.where(items < 8, 1.0, -0.5))))
        secs = np.sort(rng.integers(0, 86_400, ROWS))
        midnight = int(np.datetime64(day.isoformat(), "s").astype(np.int64))
        table = pa.table(
            {
                "impression_id": [f"{day:%m%d}-{i}" for i in range(ROWS)],
                "event_time": pa.array((midnight + secs) * 1_000_000, pa.timestamp("us", tz="UTC")),
                "user": [f"u{u}" for u in users],
                "item": [f"i{i}" for i in items],
                "tags": [[f"t{i % 4}", f"t{u % 5}"] for u, i in zip(users, items, strict=True)],
                "label": pa.array((rng.random(ROWS) < p).astype(np.int8)),
            }
        )
        folder = root / f"dt={day.isoformat()}"
        folder.mkdir(parents=True)
        pq.write_table(table, folder / "part-00000.parquet")


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("replay")
    write_logs(root / "logs")
    data = parquet_data(
        logs_uri=str(root / "logs"), spec=SPEC, start=START, end=START + timedelta(days=DAYS - 1)
    )
    config = ReplayConfig(
        embedding_dim=4,
        mlp_hidden=(8,),
        batch_size=64,
        default=StrategyConfig(lr=3e-3),
        strategies={"reloop": StrategyConfig(lr=3e-3)},  # the loss's own α
        cluster_by="user",
    )
    protocol = SplitProtocol(warmup_bins=WARMUP, select_from=2, select_to=3, report_from=3)
    runs = [
        RunSpec(
            strategy=s,
            seed=0,
            config=config,
            workdir=root / "work" / s,
            predictions_path=root / "predictions" / f"{s}.parquet",
            label=s,
        )
        for s in ("bce", "reloop", "full_retrain")
    ]
    results = run_many(data, runs, protocol=protocol, workers=1, keep_data=True, show_progress=False)
    summary = summarize(results, bins_from=protocol.report_from)
    paths = write_outputs(root / "out", title="test", runs=results, summary=summary, meta={})
    return {"root": root, "data": data, "results": {r["strategy"]: r for r in results}, "paths": paths}


def test_bins_and_test_then_train_order(replay: dict[str, Any]) -> None:
    for strategy, run in replay["results"].items():
        bins = run["bins"]
        assert [b["bin"] for b in bins] == list(range(WARMUP, DAYS))
        assert all(b["rows"] == ROWS for b in bins)
        engine = make_engine(f"sqlite:///{replay['root'] / 'work' / strategy / 'registry.db'}")
        try:
            with session_scope(engine, readonly=True) as session:
                versions = {v.version: v for v in store.list_versions(session, model_name="ctr", limit=100)}
        finally:
            engine.dispose()
        assert len(versions) == 1 + len(bins)  # warm-up + one cycle per bin, all promoted
        warm = versions[bins[0]["model_version"]]
        assert warm.cycle_date == START + timedelta(days=WARMUP - 1)
        for prev, b in zip([None, *bins[:-1]], bins, strict=True):
            scored_by = versions[b["model_version"]]
            day = date.fromisoformat(b["date"])
            # The model that scored bin k was trained on data up to the day before k, never on k.
            assert scored_by.cycle_date < day and scored_by.data_last_day < day
            assert versions[b["trained_version"]].cycle_date == day
            if prev is not None:
                assert b["model_version"] == prev["trained_version"]
            assert b["decision"] == "promoted"
        rows_trained = [b["train_rows"] for b in bins]
        if strategy == "full_retrain":  # every bin up to k, from scratch
            assert rows_trained == sorted(rows_trained) and rows_trained[-1] > (DAYS - 1) * ROWS
            assert versions[bins[-1]["trained_version"]].train_config["cold_start"] is True
        else:
            # The 10% hash holdout is trained on after the gate: the version learned every row.
            assert all(r == ROWS for r in rows_trained)
            assert versions[bins[-1]["trained_version"]].train_config["cold_start"] is False
    # each run records the loss parameters it trained with, the loss's defaults included
    assert replay["results"]["reloop"]["loss_params"] == resolve_params("reloop", {}) == {"alpha": 0.02}
    assert replay["results"]["bce"]["loss_params"] == {}


def test_archived_priors_are_what_the_predict_path_returned(replay: dict[str, Any]) -> None:
    for strategy, run in replay["results"].items():
        preds = pq.read_table(run["predictions"]).to_pandas()
        archive = replay["root"] / "work" / strategy / "archive"
        for b in run["bins"]:
            served = preds[preds["bin"] == b["bin"]].set_index("impression_id")["ctr"]
            batches = list(
                read_predictions(
                    str(archive),
                    version=b["model_version"],
                    start=date.today() - timedelta(days=2),
                    end=date.today() + timedelta(days=2),
                )
            )
            table = pa.Table.from_batches(batches).to_pandas().set_index("impression_id")["ctr"]
            archived = table.reindex(served.index)
            assert not archived.isna().any()
            np.testing.assert_array_equal(archived.to_numpy(), served.to_numpy())
            assert b["prior_archived"] == ROWS  # the cycle joined every row with its archived prior


def brute_auc(y: np.ndarray, p: np.ndarray) -> float:
    pos, neg = p[y == 1], p[y == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def brute_logloss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def test_json_figures_recompute_from_the_per_row_predictions(replay: dict[str, Any]) -> None:
    payload = json.loads(replay["paths"]["json"].read_text())
    assert replay["paths"]["markdown"].read_text().count("|") > 10
    assert replay["paths"]["auc_per_bin"].stat().st_size > 1000
    assert replay["paths"]["gain_over_bce"].stat().st_size > 1000
    logs = replay["data"].table.to_pandas().set_index("impression_id")["label"]
    for run in payload["runs"]:
        preds = pq.read_table(run["predictions"]).to_pandas()
        # Labels in the predictions file are the logged labels.
        np.testing.assert_array_equal(preds["label"].to_numpy(), logs.loc[preds["impression_id"]].to_numpy())
        for b in run["bins"]:
            rows = preds[preds["bin"] == b["bin"]]
            y, p = rows["label"].to_numpy(float), rows["ctr"].to_numpy()
            assert b["rows"] == len(rows) and b["clicks"] == int(y.sum())
            assert b["auc"] == pytest.approx(brute_auc(y, p), abs=1e-12)
            assert b["logloss"] == pytest.approx(brute_logloss(y, p), abs=1e-12)
        seed = payload["summary"]["strategies"][run["strategy"]]["seeds"]["0"]
        rep = preds[preds["bin"] >= 3]
        y, p = rep["label"].to_numpy(float), rep["ctr"].to_numpy()
        assert seed["pooled_auc"] == pytest.approx(brute_auc(y, p), abs=1e-12)
        assert seed["pooled_logloss"] == pytest.approx(brute_logloss(y, p), abs=1e-12)
        per_bin = [brute_auc(g["label"].to_numpy(float), g["ctr"].to_numpy()) for _, g in rep.groupby("bin")]
        assert seed["mean_bin_auc"] == pytest.approx(np.mean(per_bin), abs=1e-12)
    summary = payload["summary"]["strategies"]
    paired = summary["reloop"]["paired_vs_bce"]["pooled_auc"]["mean"]
    assert paired == pytest.approx(
        summary["reloop"]["pooled_auc"]["mean"] - summary["bce"]["pooled_auc"]["mean"]
    )


def test_cli_parquet_replay_writes_json_markdown_and_plots(tmp_path: Path) -> None:
    write_logs(tmp_path / "logs")
    (tmp_path / "spec.toml").write_text(spec_toml(SPEC))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "replay",
            "parquet",
            "--logs",
            str(tmp_path / "logs"),
            "--spec",
            str(tmp_path / "spec.toml"),
            "--start",
            START.isoformat(),
            "--end",
            (START + timedelta(days=3)).isoformat(),
            "--strategies",
            "bce,lr",
            "--seeds",
            "1",
            "--workers",
            "1",
            "--embedding-dim",
            "4",
            "--mlp",
            "8",
            "--batch-size",
            "64",
            "--warmup-bins",
            "2",
            "--report-from",
            "2",
            "--holdout-fraction",
            "0.3",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads((out / "results.json").read_text())
    assert payload["meta"]["config"]["holdout_fraction"] == 0.3
    assert {r["strategy"] for r in payload["runs"]} == {"bce", "lr"}
    assert {r["model"] for r in payload["runs"]} == {"dnn", "lr"}
    assert "| lr | 1 |" in (out / "results.md").read_text()
    assert (out / "auc_per_bin.png").exists() and not (out / "work").exists()
    args = ["replay", "parquet", "--logs", str(tmp_path / "logs"), "--spec", str(tmp_path / "spec.toml")]
    args += ["--start", "2024-03-01", "--end", "2024-03-03", "--strategies", "bce,nope", "--out", str(out)]
    bad = CliRunner().invoke(app, args)
    assert bad.exit_code != 0 and "nope" in bad.output
    bad = CliRunner().invoke(app, [*args[:-4], "--holdout-fraction", "1", "--out", str(out)])
    assert bad.exit_code != 0 and "--holdout-fraction 1.0: must be within (0, 1)" in bad.output


def test_movielens_conversion_follows_the_protocol(tmp_path: Path) -> None:
    week = 604_800
    (tmp_path / "u.data").write_text(
        "\n".join(["2\t1\t4\t1000", "1\t2\t3\t1000", "1\t1\t5\t999", f"2\t2\t1\t{1000 + 3 * week}"]) + "\n"
    )
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|9404\n")
    flags = ["0"] * 19
    drama = flags.copy()
    drama[8] = drama[14] = "1"
    (tmp_path / "u.item").write_text(
        "1|A (1995)|01-Jan-1995||url|" + "|".join(drama) + "\n2|B|||url|" + "|".join(flags) + "\n"
    )
    t = movielens_table(tmp_path).to_pylist()
    assert [r["impression_id"] for r in t] == ["u1-i1", "u1-i2", "u2-i1", "u2-i2"]  # (ts, user, item)
    assert [r["label"] for r in t] == [1, 0, 1, 0]
    assert [r["bin"] for r in t] == [0, 0, 0, 3]
    assert t[0]["age_bucket"] == "2" and t[2]["age_bucket"] == "5" and t[2]["zip3"] == "940"
    assert t[0]["release_year"] == "1995" and t[1]["release_year"] == "unknown"
    assert t[0]["genre"] == "Drama" and t[0]["genres"] == ["Drama", "Romance"]
    assert t[1]["genre"] == "unknown" and t[1]["genres"] == ["unknown"]
    (tmp_path / "u.data").write_text("1\tx\t4\t1000\n")
    with pytest.raises(MovieLensError, match=r"u\.data: row 1: field 'item_id'"):
        movielens_table(tmp_path)
    (tmp_path / "u.user").unlink()
    with pytest.raises(MovieLensError, match=r"u\.user: file not found"):
        movielens_table(tmp_path)


def test_a_replay_over_logs_with_a_missing_day_completes(tmp_path: Path) -> None:
    """A day without a partition is a bin without rows: its cycle is skipped and the replay goes on."""
    write_logs(tmp_path / "logs")
    gone = START + timedelta(days=3)
    for f in (tmp_path / "logs" / f"dt={gone.isoformat()}").iterdir():
        f.unlink()
    (tmp_path / "logs" / f"dt={gone.isoformat()}").rmdir()
    data = parquet_data(
        logs_uri=str(tmp_path / "logs"), spec=SPEC, start=START, end=START + timedelta(days=DAYS - 1)
    )
    config = ReplayConfig(embedding_dim=4, mlp_hidden=(8,), batch_size=64, default=StrategyConfig(lr=3e-3))
    run = RunSpec(
        strategy="bce",
        seed=0,
        config=config,
        workdir=tmp_path / "work",
        predictions_path=tmp_path / "bce.parquet",
        label="bce",
    )
    protocol = SplitProtocol(warmup_bins=WARMUP, select_from=2, select_to=3, report_from=2)
    (result,) = run_many(data, [run], protocol=protocol, workers=1, show_progress=False)
    by_bin = {b["bin"]: b for b in result["bins"]}
    assert sorted(by_bin) == list(range(WARMUP, DAYS))
    assert by_bin[3]["rows"] == 0 and by_bin[3]["decision"] == "skipped"
    assert "no click logs" in by_bin[3]["skip_reason"]
    # The version that scored the missing day's successor is the one trained before the gap.
    assert by_bin[4]["model_version"] == by_bin[2]["trained_version"]
    assert by_bin[4]["decision"] == by_bin[5]["decision"] == "promoted"
    scored = pq.read_table(tmp_path / "bce.parquet")
    assert set(scored.column("bin").to_pylist()) == {2, 4, 5}


def test_bootstrap_interval_is_over_users_and_pairs_the_seeds(replay: dict[str, Any]) -> None:
    summary = summarize(list(replay["results"].values()), bins_from=3, bootstrap=200)
    boot = summary["strategies"]["reloop"]["bootstrap_vs_bce"]
    preds = {s: pq.read_table(r["predictions"]) for s, r in replay["results"].items()}
    keep = pa.compute.greater_equal(preds["bce"].column("bin"), 3)
    bce, rel = preds["bce"].filter(keep), preds["reloop"].filter(keep)
    y = bce.column("label").to_numpy().astype(float)
    expected = brute_auc(y, rel.column("ctr").to_numpy()) - brute_auc(y, bce.column("ctr").to_numpy())
    assert boot["pooled_auc"]["diff"] == pytest.approx(expected, abs=1e-12)
    assert boot["pooled_auc"]["low"] <= boot["pooled_auc"]["diff"] <= boot["pooled_auc"]["high"]
    assert boot["pooled_auc"]["high"] - boot["pooled_auc"]["low"] > 0
    # Clusters are the users of the scored rows (30 in the generated logs), not rows.
    assert boot["clusters"] == len(set(bce.column("cluster").to_pylist())) <= 30
    assert boot["seeds"] == [0] and boot["replicates"] == 200


def test_replay_loss_options_default_to_the_losses_own_defaults() -> None:
    """The replay reports the service's default losses unless a flag says otherwise."""
    import inspect

    from reloop_service.replay.commands import _options, synthetic

    kw = {
        name: p.default
        for name, p in inspect.signature(synthetic).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    per = _options(**kw).config.strategies
    for loss in ("reloop", "distill", "label_smoothing"):
        assert per[loss].loss_params == {}
        assert resolve_params(loss, per[loss].loss_params) == resolve_params(loss, {})
    chosen = _options(**(kw | {"alpha": 0.3, "beta": 0.25})).config.strategies
    assert chosen["reloop"].loss_params == {"alpha": 0.3}
    assert chosen["distill"].loss_params == {"beta": 0.25}


def test_an_out_of_range_loss_parameter_is_refused_before_any_cycle(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app,
        [
            "replay",
            "synthetic",
            "--alpha",
            "1.5",
            "--bins",
            "6",
            "--impressions",
            "200",
            "--seeds",
            "1",
            "--strategies",
            "reloop",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 1
    assert "--alpha" in res.output and "alpha=1.5 is out of range" in res.output
    assert not out.exists()  # nothing ran
