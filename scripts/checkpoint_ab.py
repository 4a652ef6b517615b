"""Checkpoint forms side by side: serialize, ``ArtifactStore.put``, then get and load.

    python scripts/checkpoint_ab.py PATH/TO/artifact.ckpt [--rounds 3]

The forms: version 2 plain, version 2 compressed (every tensor dense) and version 3 compressed (the
current artifacts: tables stored by their nonzero rows). Alternates them (the machine's load drifts)
and prints each round's wall times and the CPU of serializing and of loading, in ms
(docs/benchmarks.md, Hourly cycles).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from reloop_service.registry.artifacts import ArtifactStore
from reloop_service.training.checkpoint import (
    CHECKPOINT_VERSION,
    checkpoint_from_bytes,
    checkpoint_to_bytes,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path, help="A checkpoint file (e.g. one of a demo's artifacts).")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ckpt = checkpoint_from_bytes(args.artifact.read_bytes())
    store = ArtifactStore(tempfile.mkdtemp(prefix="checkpoint-ab-"))
    for _ in range(args.rounds):
        for version, compress in ((2, False), (2, True), (CHECKPOINT_VERSION, True)):
            t0, c0 = time.perf_counter(), time.process_time()
            data = checkpoint_to_bytes(ckpt, compress=compress, version=version)
            t1, c1 = time.perf_counter(), time.process_time()
            ref = store.put(data, "ab.ckpt")
            t2 = time.perf_counter()
            raw = store.get(ref)
            t3, c3 = time.perf_counter(), time.process_time()
            checkpoint_from_bytes(raw)
            t4, c4 = time.perf_counter(), time.process_time()
            print(
                f"version {version} compress={compress!s:5}: {len(data) / 1e6:5.1f} MB, "
                f"serialize {1000 * (t1 - t0):4.0f} ms ({1000 * (c1 - c0):4.0f} CPU), "
                f"put {1000 * (t2 - t1):4.0f} ms, get {1000 * (t3 - t2):4.0f} ms, "
                f"load {1000 * (t4 - t3):4.0f} ms ({1000 * (c4 - c3):4.0f} CPU)"
            )


if __name__ == "__main__":
    main()
