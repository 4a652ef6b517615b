"""Plain against compressed cycle artifacts: serialize, ``ArtifactStore.put``, then get and load.

    python scripts/checkpoint_ab.py PATH/TO/artifact.ckpt [--rounds 3]

Alternates the two forms (the machine's load drifts) and prints each round's times in ms
(docs/benchmarks.md, Hourly cycles).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from reloop_service.registry.artifacts import ArtifactStore
from reloop_service.training.checkpoint import checkpoint_from_bytes, checkpoint_to_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path, help="A checkpoint file (e.g. one of a demo's artifacts).")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ckpt = checkpoint_from_bytes(args.artifact.read_bytes())
    store = ArtifactStore(tempfile.mkdtemp(prefix="checkpoint-ab-"))
    for _ in range(args.rounds):
        for compress in (False, True):
            t0 = time.perf_counter()
            data = checkpoint_to_bytes(ckpt, compress=compress)
            t1 = time.perf_counter()
            ref = store.put(data, "ab.ckpt")
            t2 = time.perf_counter()
            checkpoint_from_bytes(store.get(ref))
            t3 = time.perf_counter()
            print(
                f"compress={compress!s:5}: {len(data) / 1e6:5.1f} MB, serialize {1000 * (t1 - t0):4.0f} ms, "
                f"put {1000 * (t2 - t1):4.0f} ms, get+load {1000 * (t3 - t2):4.0f} ms"
            )


if __name__ == "__main__":
    main()
