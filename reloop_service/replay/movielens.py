"""MovieLens 100K as click logs: the protocol "ml100k-weekly" (see ``docs/replay.md``).

Ratings sorted by (timestamp, user_id, item_id); a click is a rating of 4 or more; bins are 7 days
from the first timestamp. The dataset is research-only: it is read from where the user keeps it
and never copied into the project.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from reloop_service.data.spec import CategoricalField, FeatureSpec, MultiCategoricalField

WEEK_S = 604_800
GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
# Hash spaces far above each field's vocabulary (943 users, 1,682 items, ~800 zip3s): with 4,096
# buckets 287 items and 102 users shared a row, which cost 0.006 AUC. `reloop replay` reports the
# collisions of every field (data/collisions.py); these sizes leave a handful at most.
CATEGORICAL = (
    ("user_id", 65536),
    ("item_id", 65536),
    ("gender", 1024),
    ("age_bucket", 1024),
    ("occupation", 1024),
    ("zip3", 65536),
    ("release_year", 4096),
    ("genre", 1024),
)
GENRES_BUCKETS = 1024


class MovieLensError(ValueError):
    """The MovieLens folder is missing a file or a file is malformed (the message names it)."""


def movielens_spec() -> FeatureSpec:
    """The feature spec of ``movielens_table``: 8 categorical fields and the genre list."""
    return FeatureSpec(
        label="label",
        impression_id="impression_id",
        event_time="event_time",
        categorical=tuple(CategoricalField(name, buckets) for name, buckets in CATEGORICAL),
        multi=(MultiCategoricalField("genres", GENRES_BUCKETS, 6),),
    )


def _read(path: Path, names: list[str], sep: str) -> pd.DataFrame:
    if not path.is_file():
        raise MovieLensError(
            f"{path}: file not found (expected the ml-100k folder with u.data, u.user, u.item)"
        )
    try:
        frame = pd.read_csv(path, sep=sep, header=None, names=names, encoding="latin-1", dtype=str)
    except Exception as exc:  # pandas raises several types for a broken file
        raise MovieLensError(f"{path}: unreadable: {exc}") from exc
    if frame.empty:
        raise MovieLensError(f"{path}: no rows")
    return frame


def _ints(frame: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise MovieLensError(
            f"{path}: row {row + 1}: field {column!r} is not an integer: {frame[column].iloc[row]!r}"
        )
    return values.to_numpy(dtype=np.int64)


def movielens_table(data_dir: Path) -> pa.Table:
    """Every rating as one impression with its features, label and ``bin`` (week index).

    Columns: ``impression_id`` ("u<user>-i<item>"), ``label`` (int8), ``event_time`` (timestamp UTC),
    the categorical fields of ``movielens_spec`` as strings, ``genres`` (list of strings), ``bin``.
    """
    data_dir = Path(data_dir).expanduser()
    ratings_path = data_dir / "u.data"
    ratings = _read(ratings_path, ["user_id", "item_id", "rating", "ts"], "\t")
    users_path = data_dir / "u.user"
    users = _read(users_path, ["user_id", "age", "gender", "occupation", "zip"], "|")
    items_path = data_dir / "u.item"
    items = _read(items_path, ["item_id", "title", "release", "video", "url", *GENRES], "|")

    r = pd.DataFrame(
        {
            "user_id": _ints(ratings, "user_id", ratings_path),
            "item_id": _ints(ratings, "item_id", ratings_path),
            "rating": _ints(ratings, "rating", ratings_path),
            "ts": _ints(ratings, "ts", ratings_path),
        }
    )
    r = r.sort_values(["ts", "user_id", "item_id"], kind="mergesort").reset_index(drop=True)

    u = pd.DataFrame(
        {
            "user_id": _ints(users, "user_id", users_path),
            "age_bucket": (_ints(users, "age", users_path) // 10).astype(str),
            "gender": users["gender"].fillna("").to_numpy(),
            "occupation": users["occupation"].fillna("").to_numpy(),
            "zip3": users["zip"].fillna("").str[:3].to_numpy(),
        }
    )
    year = items["release"].fillna("").str[-4:]
    genre_flags = items[list(GENRES)].fillna("0").to_numpy() == "1"
    genre_lists = [[g for g, on in zip(GENRES, row, strict=True) if on] for row in genre_flags]
    i = pd.DataFrame(
        {
            "item_id": _ints(items, "item_id", items_path),
            "release_year": np.where(year.str.fullmatch(r"\d{4}"), year, "unknown"),
            "genre": [g[0] if g else "unknown" for g in genre_lists],
            "genres": [g if g else ["unknown"] for g in genre_lists],
        }
    )
    n = len(r)
    frame = r.merge(u, on="user_id", how="left", validate="many_to_one").merge(
        i, on="item_id", how="left", validate="many_to_one"
    )
    if len(frame) != n:
        raise MovieLensError(f"{data_dir}: joining ratings with users/items changed the row count")
    for column, path in (("gender", users_path), ("genre", items_path)):
        missing = frame[column].isna().to_numpy()
        if missing.any():
            row = int(np.flatnonzero(missing)[0])
            raise MovieLensError(
                f"{ratings_path}: row of user {frame['user_id'][row]} item {frame['item_id'][row]} "
                f"has no match in {path}"
            )
    ts = frame["ts"].to_numpy()
    return pa.table(
        {
            "impression_id": pa.array(
                [f"u{a}-i{b}" for a, b in zip(frame["user_id"], frame["item_id"], strict=True)]
            ),
            "label": pa.array((frame["rating"].to_numpy() >= 4).astype(np.int8)),
            "event_time": pa.array(ts * 1_000_000, pa.timestamp("us", tz="UTC")),
            "user_id": pa.array(frame["user_id"].astype(str).to_numpy()),
            "item_id": pa.array(frame["item_id"].astype(str).to_numpy()),
            "gender": pa.array(frame["gender"].to_numpy(dtype=object)),
            "age_bucket": pa.array(frame["age_bucket"].to_numpy(dtype=object)),
            "occupation": pa.array(frame["occupation"].to_numpy(dtype=object)),
            "zip3": pa.array(frame["zip3"].to_numpy(dtype=object)),
            "release_year": pa.array(frame["release_year"].to_numpy(dtype=object)),
            "genre": pa.array(frame["genre"].to_numpy(dtype=object)),
            "genres": pa.array(list(frame["genres"]), pa.list_(pa.string())),
            "bin": pa.array(((ts - ts.min()) // WEEK_S).astype(np.int64)),
        }
    )
