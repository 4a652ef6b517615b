"""Worker functions for the multi-process tests (spawned processes import them by module name)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from reloop_service.training.distributed import (
    SparseGradSync,
    agree_steps,
    all_gather_rows,
    init_distributed,
    shutdown,
    state_hash,
    wrap_dense,
)
from reloop_service.training.layers import RowSparseEmbedding
from reloop_service.training.optim import RowSparseAdam

TABLE_ROWS = (50, 30, 20)
TABLE_DIMS = (4, 4, 3)
STEPS = 3
BATCH = 16


class TinyCTR(nn.Module):
    """Three row-sparse tables (two widths) and a dense head: ids LongTensor [B, 3] -> logits [B]."""

    def __init__(self) -> None:
        super().__init__()
        self.tables = nn.ModuleList(
            RowSparseEmbedding(n, d) for n, d in zip(TABLE_ROWS, TABLE_DIMS, strict=True)
        )
        self.head = nn.Sequential(nn.Linear(sum(TABLE_DIMS), 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, ids: Tensor) -> Tensor:
        emb = torch.cat([t(ids[:, i]) for i, t in enumerate(self.tables)], dim=1)
        return self.head(emb).squeeze(1)


def batches(step: int, rank: int) -> tuple[Tensor, Tensor]:
    """Rank ``rank``'s batch of step ``step``: ids [BATCH, 3] with ids shared across ranks, labels [BATCH]."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    ids = torch.stack([torch.randint(0, n // 2 + 3 * rank, (BATCH,), generator=g) for n in TABLE_ROWS], dim=1)
    labels = (torch.rand(BATCH, generator=g) < 0.3).float()
    return ids, labels


def build(seed: int) -> tuple[TinyCTR, torch.optim.Optimizer, RowSparseAdam]:
    torch.manual_seed(seed)
    model = TinyCTR()
    dense = torch.optim.Adam(model.head.parameters(), lr=0.05)
    sparse = RowSparseAdam(list(model.tables), lr=0.05)
    return model, dense, sparse


def reference(world_size: int) -> TinyCTR:
    """One process on the concatenation of every rank's batches: what DDP must reproduce."""
    model, dense, sparse = build(seed=0)
    model.train()
    for step in range(STEPS):
        parts = [batches(step, r) for r in range(world_size)]
        ids = torch.cat([p[0] for p in parts])
        labels = torch.cat([p[1] for p in parts])
        loss = nn.functional.binary_cross_entropy_with_logits(model(ids), labels)
        dense.zero_grad()
        loss.backward()
        dense.step()
        sparse.step()
    return model


def sync_worker(local_rank: int, world_size: int, out_dir: str) -> None:
    """Train STEPS steps on this rank's batches with DDP + SparseGradSync; save the state dict.

    The ranks meet through a file store in ``out_dir``, not a TCP port picked in advance: under
    pytest-xdist another worker's gloo or server can bind a just-picked free port before rank 0
    does, and the ranks then abort. ``init_distributed`` finds the group joined and uses it.
    """
    os.environ["LOCAL_RANK"] = str(local_rank)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=Path(out_dir, "rendezvous").as_uri(), rank=local_rank, world_size=world_size
    )
    ctx = init_distributed(device="cpu")
    try:
        # Different seeds per rank: DDP's initial broadcast must make the dense weights equal, and the
        # tables are loaded from rank 0's values (as a warm start from one checkpoint would).
        model, dense, sparse = build(seed=ctx.rank)
        ref_tables = build(seed=0)[0]
        for table, ref in zip(model.tables, ref_tables.tables, strict=True):
            table.weight.data.copy_(ref.weight.data)
            table.init_seed = ref.init_seed  # rows first touched later draw the same values on every rank
        ddp = wrap_dense(model, ctx)
        sync = SparseGradSync(list(model.tables), sparse, ctx)
        model.train()
        steps = agree_steps(STEPS - ctx.rank, ctx)  # uneven local counts: everyone runs the max
        for step in range(steps):
            ids, labels = batches(step, ctx.rank)
            weight = 1.0 if step < STEPS - ctx.rank else 0.0  # a padded step adds nothing
            loss = nn.functional.binary_cross_entropy_with_logits(ddp(ids), labels) * weight
            dense.zero_grad()
            loss.backward()
            dense.step()
            sync.step(contribute=weight > 0)
        gathered = all_gather_rows(torch.arange(ctx.rank + 1), ctx)
        torch.save(
            {
                "state": model.state_dict(),
                "hash": state_hash(model),
                "steps": steps,
                "gathered": [g.tolist() for g in gathered],
                "exchanged": sync.rows_exchanged,
            },
            Path(out_dir) / f"rank{ctx.rank}.pt",
        )
    finally:
        shutdown(ctx)
