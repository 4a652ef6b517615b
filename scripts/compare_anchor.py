"""Paired comparison of replay predictions with the FuxiCTR ml100k-weekly anchor (95% CI over users).

The anchor (``../shared/anchors/fuxictr-ml100k-weekly``) has one prediction per row of the sorted
``u.data``; the replay's predictions name rows by impression id (``u<user>-i<item>``). Rows of the
reported bins are matched by id, and every seed of the replay is paired with the anchor's one seed.

    python scripts/compare_anchor.py --data-dir ../shared/datasets/ml-100k \\
        --anchor ../shared/anchors/fuxictr-ml100k-weekly/fuxictr_dnn_incremental_seed2024_preds.csv.gz \\
        --predictions 'ml/predictions/bce-s*.parquet'
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from reloop_service.replay.movielens import movielens_table
from reloop_service.replay.stats import paired_bootstrap
from reloop_service.training.evaluation import auc, logloss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--anchor", type=Path, required=True, help="row,bin,click,pred CSV (gz).")
    ap.add_argument("--predictions", required=True, help="Glob of the replay's per-seed Parquet files.")
    ap.add_argument("--bins-from", type=int, default=11)
    ap.add_argument("--replicates", type=int, default=1000)
    a = ap.parse_args()
    ids = np.asarray(movielens_table(a.data_dir).column("impression_id").to_pylist(), dtype=object)
    anchor = pd.read_csv(a.anchor)
    anchor = anchor[anchor["bin"] >= a.bins_from]
    ref = pd.Series(anchor["pred"].to_numpy(), index=ids[anchor["row"].to_numpy()])
    ours, base = [], []
    y = users = None
    for path in sorted(glob.glob(a.predictions)):
        t = pq.read_table(path).to_pandas()
        t = t[t["bin"] >= a.bins_from].set_index("impression_id")
        common = t.index.intersection(ref.index)
        t = t.loc[common]
        ours.append(t["ctr"].to_numpy())
        base.append(ref.loc[common].to_numpy())
        y = t["label"].to_numpy().astype(float)
        users = t["cluster"].to_numpy()
    if y is None or users is None:
        raise SystemExit(f"no files match {a.predictions}")
    result = paired_bootstrap(y, ours, base, users, replicates=a.replicates)
    print(
        json.dumps(
            {
                "rows": len(y),
                "seeds": len(ours),
                "ours_auc": float(np.mean([auc(y, p) for p in ours])),
                "anchor_auc": auc(y, base[0]),
                "ours_logloss": float(np.mean([logloss(y, p) for p in ours])),
                "anchor_logloss": logloss(y, base[0]),
                **{k: v.to_dict() for k, v in result.items()},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
