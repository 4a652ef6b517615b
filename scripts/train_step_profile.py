"""Training-thread CPU per step of ``reloop bench train``'s model, by phase, real path against the ceiling.

``reloop bench train`` times whole runs, so on a shared machine its ratio moves by 10-20 points from
run to run; this script says where a step's time goes. Both sides run the bench's model on the
bench's batches, pre-built (no data path), one torch thread, alternating within each repeat:

- ``train``: the trainer's step (zero_grad, forward with the row-sparse lookup, backward, dense
  Adam, ``RowSparseAdam.step``), tables starting empty as in ``trainer.train``;
- ``ceiling``: the same with every table row materialized and the tables frozen (the bench's ceiling).

Per phase it prints the thread's CPU time per steady step (first step excluded) and, for the
whole step, system time and minor page faults (``getrusage(RUSAGE_THREAD)``). Medians over the
repeats. The code measured is whatever ``reloop_service`` imports, so an older checkout is timed
with this file by pointing ``PYTHONPATH`` at it:

    PYTHONPATH=$PWD python scripts/train_step_profile.py
    PYTHONPATH=../old-checkout python scripts/train_step_profile.py   # the code before, same script
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from reloop_service.data.ingest import open_days
from reloop_service.data.spec import FeatureSpec
from reloop_service.data.transforms import FeatureBatch, labels_of, transform
from reloop_service.training import throughput_bench as tb
from reloop_service.training.models import build_model
from reloop_service.training.optim import RowSparseAdam
from reloop_service.training.trainer import rebatch

PHASES = ("forward", "backward", "dense_step", "sparse_step")


def _usage() -> tuple[float, float, int]:
    """(user + system, system, minor faults) of the calling thread."""
    r = resource.getrusage(resource.RUSAGE_THREAD)
    return r.ru_utime + r.ru_stime, r.ru_stime, r.ru_minflt


def run(
    batches: list[tuple[FeatureBatch, torch.Tensor]], spec: FeatureSpec, *, ceiling: bool, ops: bool = False
) -> dict[str, float]:
    """ms of thread CPU per steady step by phase, plus system ms and faults per step.

    With ``ops``, the steady steps run under ``torch.profiler`` instead and the result is each
    operator's self CPU ms per step (the profiler's overhead included).
    """
    torch.manual_seed(0)
    model = build_model("dnn", spec, embedding_dim=tb.EMBEDDING_DIM, hidden=list(tb.HIDDEN))
    if ceiling:
        for table in model.sparse_tables():
            table.materialize()
            table.track_rows = False
    model.train()
    dense = torch.optim.Adam(model.dense_parameters(), lr=1e-3)
    sparse = RowSparseAdam(model.sparse_tables(), lr=1e-2)
    totals = dict.fromkeys((*PHASES, "step", "sys", "faults"), 0.0)
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if ops else None
    for i, (features, labels) in enumerate(batches):
        if i == 1 and profiler is not None:
            profiler.__enter__()
        u0 = _usage()
        dense.zero_grad(set_to_none=True)
        sparse.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(features), labels)
        u1 = _usage()
        loss.backward()
        u2 = _usage()
        dense.step()
        u3 = _usage()
        sparse.step()
        float(loss.detach())
        u4 = _usage()
        if i == 0:
            continue
        for phase, (a, b) in zip(PHASES, ((u0, u1), (u1, u2), (u2, u3), (u3, u4)), strict=True):
            totals[phase] += b[0] - a[0]
        totals["step"] += u4[0] - u0[0]
        totals["sys"] += u4[1] - u0[1]
        totals["faults"] += u4[2] - u0[2]
    steps = len(batches) - 1
    if profiler is not None:
        profiler.__exit__(None, None, None)
        return {e.key: e.self_cpu_time_total / 1e3 / steps for e in profiler.key_averages()}
    result = {k: (v / steps if k == "faults" else v / steps * 1e3) for k, v in totals.items()}
    if not ceiling:  # rows that took their initial value during the run (tables start empty), a step
        result["new_rows"] = sum(float(t.weight.any(dim=1).sum()) for t in model.sparse_tables()) / len(
            batches
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=150_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--ops",
        type=int,
        default=0,
        help="Also profile one run of each side: the N operators that differ most.",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = tb.bench_spec()
    with tempfile.TemporaryDirectory() as tmp:
        tb.write_bench_logs(Path(tmp), args.rows)
        daylog = open_days(tmp, [tb.BENCH_DAY], spec, batch_size=65536, quarantine=False)
        batches = [(transform(spec, b), labels_of(spec, b)) for b in rebatch(daylog.iter_batches(), tb.BATCH)]
    results: dict[str, list[dict[str, float]]] = {"train": [], "ceiling": []}
    t0 = time.strftime("%H:%M")
    for _ in range(args.repeats):
        results["ceiling"].append(run(batches, spec, ceiling=True))
        results["train"].append(run(batches, spec, ceiling=False))
    steady = len(batches) - 1
    print(
        f"{t0}-{time.strftime('%H:%M')}: {steady} steady steps of {tb.BATCH} rows, medians of {args.repeats}"
    )
    print(f"{'':8} {'step':>7} " + " ".join(f"{p:>11}" for p in PHASES) + f" {'sys':>6} {'faults':>7}")
    for side, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        cells = " ".join(f"{med[p]:11.2f}" for p in PHASES)
        steps = ", ".join(f"{r['step']:.1f}" for r in runs)
        print(
            f"{side:8} {med['step']:7.2f} {cells} {med['sys']:6.2f} {med['faults']:7.0f}  (steps: {steps} ms)"
        )
    ratio = [c["step"] / t["step"] for c, t in zip(results["ceiling"], results["train"], strict=True)]
    print(f"ceiling / train per repeat: {', '.join(f'{r:.0%}' for r in ratio)}")
    distinct = statistics.mean(_distinct_rows(model_offsets(spec), f) for f, _ in batches)
    new = results["train"][0]["new_rows"]
    print(f"rows a step: {distinct:,.0f} distinct, {new:,.0f} new (initial values drawn)")
    if args.ops:
        train_ops, ceiling_ops = (
            run(batches, spec, ceiling=False, ops=True),
            run(batches, spec, ceiling=True, ops=True),
        )
        names = sorted(
            set(train_ops) | set(ceiling_ops), key=lambda k: ceiling_ops.get(k, 0) - train_ops.get(k, 0)
        )
        print(
            f"self CPU ms a step under torch.profiler, train / ceiling, the {args.ops} largest differences:"
        )
        for name in names[: args.ops]:
            print(f"  {name[:60]:60} {train_ops.get(name, 0.0):7.2f} {ceiling_ops.get(name, 0.0):7.2f}")


def model_offsets(spec: FeatureSpec) -> torch.Tensor:
    """First row of each categorical field in the fused table."""
    sizes = torch.tensor([0] + [f.buckets for f in spec.categorical[:-1]])
    return sizes.cumsum(0)


def _distinct_rows(offsets: torch.Tensor, features: FeatureBatch) -> int:
    """Distinct table rows a batch looks up (its categorical fields)."""
    return int(torch.unique(features.cat + offsets).numel())


if __name__ == "__main__":
    main()
