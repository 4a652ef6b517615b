"""Row-sparse embeddings under DDP: two gloo processes must equal one process on the joint batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from reloop_service.training.distributed import (
    SINGLE,
    RowGroup,
    agree_steps,
    shard,
    shard_row_groups,
    state_hash,
)

from . import ddp_workers


def run_ranks(world_size: int, out_dir: Path) -> list[dict]:
    mp.spawn(ddp_workers.sync_worker, args=(world_size, str(out_dir)), nprocs=world_size, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Two gloo ranks; rank 1 has one step less of data and must pad (zero weight)."""
    return run_ranks(2, tmp_path_factory.mktemp("ddp"))


def test_ranks_end_identical_with_uneven_step_counts(ranks: list[dict]) -> None:
    assert ranks[0]["hash"] == ranks[1]["hash"], "ranks diverged"
    assert [r["steps"] for r in ranks] == [ddp_workers.STEPS, ddp_workers.STEPS]
    assert ranks[0]["gathered"] == [[0], [0, 1]]  # variable-length all-gather keeps rank order
    assert ranks[0]["exchanged"] > 0


def test_sparse_sync_equals_single_process_update(ranks: list[dict]) -> None:
    # Rank 1 pads its last step with a zero-weight batch, so the reference drops that batch.
    ref_model, dense, sparse = ddp_workers.build(seed=0)
    ref_model.train()
    for step in range(ddp_workers.STEPS):
        parts = [ddp_workers.batches(step, r) for r in range(2) if step < ddp_workers.STEPS - r]
        losses = [
            torch.nn.functional.binary_cross_entropy_with_logits(ref_model(ids), labels)
            for ids, labels in parts
        ]
        # DDP averages over the world (2), whether or not a rank's step was padding.
        loss = sum(losses) / 2
        dense.zero_grad()
        loss.backward()
        dense.step()
        sparse.step()
    want = ref_model.state_dict()
    got = ranks[0]["state"]
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4, msg=f"{name} differs")
    # Untouched rows keep their initial values; touched rows moved.
    init = ddp_workers.build(seed=0)[0].state_dict()
    moved = (got["tables.0.weight"] != init["tables.0.weight"]).any(dim=1)
    assert moved.any() and not moved.all()


def test_single_process_context_is_a_no_op() -> None:
    assert agree_steps(5, SINGLE) == 5
    assert not SINGLE.active and SINGLE.is_main


def test_shards_are_disjoint_complete_and_balanced() -> None:
    items = list(range(11))
    parts = [shard(items, rank=r, world_size=3) for r in range(3)]
    assert sorted(x for p in parts for x in p) == items
    groups = [RowGroup(f"f{i}.parquet", j, 100 * (i + 1)) for i in range(3) for j in range(2)]
    shares = [shard_row_groups(groups, rank=r, world_size=2) for r in range(2)]
    assert set(shares[0]).isdisjoint(shares[1]) and set(shares[0]) | set(shares[1]) == set(groups)
    rows = [sum(g.num_rows for g in s) for s in shares]
    assert abs(rows[0] - rows[1]) <= 100, rows
    with pytest.raises(ValueError, match="outside"):
        shard(items, rank=3, world_size=3)


def test_state_hash_sees_one_ulp() -> None:
    model = ddp_workers.TinyCTR()
    before = state_hash(model)
    with torch.no_grad():
        w = model.head[0].weight
        w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(10.0))
    assert state_hash(model) != before
