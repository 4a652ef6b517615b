from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from reloop_service.data.ingest import open_days
from reloop_service.data.simulator import ClickSimulator, SimulatorConfig, bayes_logloss
from reloop_service.data.spec import default_spec
from reloop_service.data.transforms import fit_numeric, labels_of, transform
from reloop_service.training.evaluation import auc

START = date(2024, 1, 1)
SMALL = SimulatorConfig(
    impressions_per_day=4000, n_users=3000, n_items=800, new_users_per_day=200, new_items_per_day=50
)


def test_same_seed_same_day_is_identical_in_any_order() -> None:
    a = ClickSimulator(3, start=START, config=SMALL)
    b = ClickSimulator(3, start=START, config=SMALL)
    day3 = START + timedelta(days=3)
    ta, ca = a.simulate_day(day3)
    b.simulate_day(START)  # other days first must not change day 3
    tb, cb = b.simulate_day(day3)
    assert ta.equals(tb) and np.array_equal(ca, cb)
    other, _ = ClickSimulator(4, start=START, config=SMALL).simulate_day(day3)
    assert not other.column("user_id").equals(ta.column("user_id"))


def test_true_ctr_is_recomputable_from_logged_features(tmp_path: Path) -> None:
    sim = ClickSimulator(1, start=START, config=SMALL)
    rows = sim.impressions(START + timedelta(days=1), 500)
    table = sim.impressions_table(START + timedelta(days=1), 500)
    assert np.allclose(sim.true_ctr(rows), sim.true_ctr(table))
    assert set(rows[0]) == {"impression_id", "event_time", *default_spec().feature_names}
    assert rows[0]["event_time"].endswith("Z")
    ctr = sim.true_ctr(table)
    assert 0.03 < ctr.mean() < 0.25 and ctr.min() > 0 and ctr.max() < 1
    # Bayes-optimal logloss: the expectation is the mean Bernoulli entropy; realized on draws is close
    labels = sim.draw_clicks(ctr, START + timedelta(days=1))
    assert abs(bayes_logloss(ctr) - bayes_logloss(ctr, labels)) < 0.05
    assert bayes_logloss(ctr) < bayes_logloss(np.full_like(ctr, ctr.mean()))


def test_popularity_skew_new_entities_and_drift() -> None:
    sim = ClickSimulator(2, start=START, config=SMALL)
    t0, c0 = sim.simulate_day(START)
    t5, _ = sim.simulate_day(START + timedelta(days=5))
    users = t0.column("user_id").to_numpy()
    _, counts = np.unique(users, return_counts=True)
    top = np.sort(counts)[::-1]
    assert top[:30].sum() > 10 * 30 * counts.mean()  # heavy head (Zipf), not uniform
    seen_before = set(t0.column("item_id").to_pylist())
    born_day5 = t5.column("item_id").to_numpy() >= SMALL.n_items + SMALL.new_items_per_day * 4
    assert born_day5.mean() > 0.05  # the day's new items get traffic
    assert not seen_before & set(t5.column("item_id").to_numpy()[born_day5].tolist())
    assert t5.column("user_id").to_numpy().max() >= SMALL.n_users  # new users too
    # the same impressions' truth moves with the day (drift)
    moved = t0.set_column(1, "event_time", t5.column("event_time").slice(0, t0.num_rows))
    assert not np.allclose(sim.true_ctr(moved), c0)


def test_written_day_passes_ingestion_with_the_default_spec(tmp_path: Path) -> None:
    sim = ClickSimulator(5, start=START, config=SMALL)
    logs = str(tmp_path / "logs")
    for i in range(2):
        day = START + timedelta(days=i)
        table, _ = sim.simulate_day(day)
        sim.write_day(logs, day, table)
    rows = sim.impressions(START + timedelta(days=2), 50)
    labels = sim.draw_clicks(sim.true_ctr(rows), START + timedelta(days=2))
    sim.write_day(logs, START + timedelta(days=2), rows, labels=labels)
    day_log = open_days(logs, [START + timedelta(days=i) for i in range(3)], default_spec(), batch_size=1024)
    assert day_log.report.rows_read == 2 * SMALL.impressions_per_day + 50
    assert day_log.report.rows_valid == day_log.report.rows_read  # ids unique per day, times parsable
    assert sum(b.num_rows for b in day_log.iter_batches()) == day_log.report.rows_valid


def test_signal_is_learnable_within_a_day() -> None:
    """A first-order model on the hashed features beats chance on the next day's impressions."""
    torch.manual_seed(0)
    sim = ClickSimulator(11, start=START, config=SimulatorConfig(impressions_per_day=20_000))
    train, _ = sim.simulate_day(START)
    test, test_ctr = sim.simulate_day(START + timedelta(days=1))
    spec = fit_numeric(default_spec(), train.to_batches())
    tables = [torch.nn.Embedding(f.buckets, 1) for f in spec.categorical]
    for t in tables:
        torch.nn.init.zeros_(t.weight)
    multi = torch.nn.Embedding(spec.multi[0].buckets, 1, padding_idx=0)
    torch.nn.init.zeros_(multi.weight)
    dense = torch.nn.Linear(len(spec.numeric), 1)
    params = [p for t in tables for p in t.parameters()] + list(multi.parameters()) + list(dense.parameters())
    opt = torch.optim.Adam(params, lr=0.05)

    def logits(fb) -> torch.Tensor:
        z = dense(fb.num).squeeze(1) + multi(fb.multi[:, 0, :]).sum(dim=(1, 2))
        for j, t in enumerate(tables):
            z = z + t(fb.cat[:, j]).squeeze(1)
        return z

    batches = [
        (transform(spec, b), labels_of(spec, b))
        for b in pa.Table.from_batches(train.to_batches()).to_batches(2048)
    ]
    for _ in range(4):
        for fb, y in batches:
            opt.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(logits(fb), y).backward()
            opt.step()
    with torch.no_grad():
        p = torch.sigmoid(logits(transform(spec, test))).numpy()
    y = test.column("label").to_numpy()
    model_auc = auc(y, p)
    print(f"first-order model AUC {model_auc:.3f}, truth {auc(y, test_ctr):.3f}")
    assert model_auc > 0.62, model_auc
    assert auc(y, test_ctr) > model_auc  # the truth is still better: there is more to learn
