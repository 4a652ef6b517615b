"""Serving's records fast path (``transform_records``) against the Arrow/Parquet path of training."""

from __future__ import annotations

import math
import re
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reloop_service.data.transforms as transforms
from reloop_service.data.spec import CategoricalField, FeatureSpec, MultiCategoricalField, NumericField
from reloop_service.data.transforms import (
    FeatureBatch,
    FeatureError,
    records_to_batch,
    transform,
    transform_records,
    unknown_keys,
)


def _fitted(spec: FeatureSpec) -> FeatureSpec:
    return spec.with_numeric_stats({"price": (1.0, 2.0)})


def _equal(a: FeatureBatch, b: FeatureBatch) -> bool:
    return torch.equal(a.cat, b.cat) and torch.equal(a.multi, b.multi) and torch.equal(a.num, b.num)


def _clear_cache() -> None:
    with transforms._hash_cache_lock:
        transforms._hash_cache.clear()
        transforms._hash_cache[None] = 0


def test_records_fast_path_equals_parquet_cold_and_hot(tmp_path: Path, spec: FeatureSpec) -> None:
    spec = _fitted(spec)
    records: list[dict[str, Any]] = [
        {"user_id": 12, "device": "ios", "price": 3.5, "tags": ["a", "b"], "impression_id": "x", "junk": 1},
        {"user_id": "12", "device": None, "tags": None, "zzz": 2},
        {"price": 0, "tags": [1, 2, 3, 4]},
        {"user_id": 7.0, "device": "web", "price": None, "tags": []},
    ]
    table = pa.table(
        {
            "user_id": pa.array([12, 12, None, 7], pa.int64()),
            "device": pa.array(["ios", None, None, "web"]).dictionary_encode(),
            "price": pa.array([3.5, None, 0, None], pa.float32()),
            "tags": pa.array([["a", "b"], None, ["1", "2", "3", "4"], []], pa.large_list(pa.string())),
        }
    )
    pq.write_table(table, tmp_path / "x.parquet")
    expected = transform(spec, next(iter(pq.ParquetFile(tmp_path / "x.parquet").iter_batches())))
    _clear_cache()
    cold, unknown = transform_records(spec, records)
    hot, _ = transform_records(spec, records)  # every value now comes from the hash memo
    assert unknown == ("junk", "zzz") == unknown_keys(records_to_batch(spec, records))
    assert _equal(cold, expected) and _equal(hot, expected)
    assert _equal(transform(spec, records_to_batch(spec, records)), expected)


def test_hash_memo_bound_clears_and_stays_exact(spec: FeatureSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _fitted(spec)
    records = [{"user_id": f"u{i}", "device": f"d{i % 7}", "tags": [f"t{i}"]} for i in range(50)]
    _clear_cache()
    monkeypatch.setattr(transforms, "HASH_CACHE_SIZE", 16)
    monkeypatch.setattr(transforms, "DIRECT_HASH_MIN", 10**9)  # these 150 strings go through the memo
    a, _ = transform_records(spec, records)
    assert len(transforms._hash_cache) <= 16 + 2 * len(records) + 7
    b, _ = transform_records(spec, records[::-1])
    assert torch.equal(b.cat, a.cat.flip(0)) and torch.equal(b.multi, a.multi.flip(0))
    assert _equal(
        a,
        transform(
            spec,
            pa.table(
                {
                    "user_id": [r["user_id"] for r in records],
                    "device": [r["device"] for r in records],
                    "price": pa.nulls(50, pa.float64()),
                    "tags": [r["tags"] for r in records],
                }
            ),
        ),
    )


def test_scalar_in_a_multi_field_is_one_element_and_bools_are_numbers(spec: FeatureSpec) -> None:
    spec = _fitted(spec)
    fb, _ = transform_records(spec, [{"tags": "abc", "price": True}, {"tags": ["abc"], "price": 1.0}])
    assert torch.equal(fb.multi[0], fb.multi[1]) and int((fb.multi[0] != 0).sum()) == 1
    assert fb.num[0, 0] == fb.num[1, 0]
    via_arrow = transform(spec, records_to_batch(spec, [{"tags": "abc", "price": True}]))
    assert torch.equal(via_arrow.multi[0], fb.multi[0]) and via_arrow.num[0, 0] == fb.num[0, 0]


def test_bad_values_name_record_and_field(spec: FeatureSpec) -> None:
    spec = _fitted(spec)
    with pytest.raises(FeatureError, match=r"record 1: field 'user_id'"):
        transform_records(spec, [{"user_id": 1}, {"user_id": {"nested": 1}}])
    with pytest.raises(FeatureError, match=r"record 0: field 'price'"):
        transform_records(spec, [{"price": "cheap"}])
    with pytest.raises(FeatureError, match=r"record 2: field 'tags'"):
        transform_records(spec, [{"tags": ["a"]}, {"tags": []}, {"tags": ["b", {"x": 1}]}])
    with pytest.raises(FeatureError, match=r"record 0: field 'tags'"):
        transform_records(spec, [{"tags": {"x": 1}}])
    with pytest.raises(FeatureError, match=r"record 0: field 'price'.*out of range"):
        transform_records(spec, [{"price": 10**400}])


_cat_value = st.one_of(
    st.none(),
    st.text(max_size=6),
    st.integers(-(2**70), 2**70),
    st.sampled_from(["42", "007", "ünï", "a b"]),
)
_num_value = st.one_of(
    st.none(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
)
_multi_value = st.one_of(st.none(), st.lists(st.one_of(st.none(), st.text(max_size=3)), max_size=5))


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {},
            optional={"user_id": _cat_value, "device": _cat_value, "price": _num_value, "tags": _multi_value},
        ),
        min_size=1,
        max_size=12,
    )
)
def test_records_match_arrow_columns_of_the_same_values(rows: list[dict[str, Any]]) -> None:
    """Property: request records and Arrow columns of the same values encode to identical tensors."""
    from reloop_service.data.spec import CategoricalField, MultiCategoricalField, NumericField

    spec = FeatureSpec(
        label="label",
        impression_id="impression_id",
        event_time="event_time",
        categorical=(CategoricalField("user_id", 1000), CategoricalField("device", 16)),
        numeric=(NumericField("price", 1.0, 2.0),),
        multi=(MultiCategoricalField("tags", 64, 3),),
    )

    def cat(name: str) -> pa.Array:  # what a Parquet string column of these ids holds
        return pa.array([None if r.get(name) is None else str(r[name]) for r in rows], pa.string())

    price = [r.get("price") for r in rows]
    table = pa.table(
        {
            "user_id": cat("user_id"),
            "device": cat("device"),
            "price": pa.array([None if v is None else float(v) for v in price], pa.float64()),
            "tags": pa.array([r.get("tags") for r in rows], pa.list_(pa.string())),
        }
    )
    fast, _ = transform_records(spec, rows)
    assert _equal(fast, transform(spec, table))
    assert all(math.isfinite(x) for x in fast.num.flatten().tolist())
    assert np.array_equal(fast.cat.numpy(), transform(spec, records_to_batch(spec, rows)).cat.numpy())


_ONE_SPEC = FeatureSpec(
    label="label",
    impression_id="impression_id",
    event_time="event_time",
    categorical=(CategoricalField("user_id", 1000), CategoricalField("device", 16)),
    numeric=(NumericField("price", 1.0, 2.0), NumericField("age", -3.0, 0.5)),
    multi=(MultiCategoricalField("tags", 64, 3),),
)


def _general(spec: FeatureSpec, rows: list[dict[str, Any]]) -> Any:
    """``transform_record_columns`` with the single-record path switched off."""
    from unittest import mock

    with mock.patch.object(transforms, "_one_record", lambda spec, record: None):
        return transforms.transform_record_columns(spec, rows)


def _same_read(a: transforms.RecordHashes, b: transforms.RecordHashes) -> bool:
    return (
        a.n == b.n
        and np.array_equal(a.hashes, b.hashes)
        and a.hashes.dtype == b.hashes.dtype
        and np.array_equal(a.valid, b.valid)
        and len(a.numeric) == len(b.numeric)
        and all(
            np.array_equal(x, y, equal_nan=True) and x.dtype == y.dtype
            for x, y in zip(a.numeric, b.numeric, strict=True)
        )
        and len(a.multi_lengths) == len(b.multi_lengths)
        and all(
            np.array_equal(x, y) and x.dtype == y.dtype
            for x, y in zip(a.multi_lengths, b.multi_lengths, strict=True)
        )
    )


@settings(max_examples=150, deadline=None)
@given(
    row=st.fixed_dictionaries(
        {},
        optional={
            "user_id": _cat_value,
            "device": st.one_of(_cat_value, st.booleans(), st.floats(width=64)),
            "price": st.one_of(_num_value, st.booleans(), st.text(max_size=2)),
            "age": _num_value,
            "tags": st.one_of(_multi_value, st.lists(st.text(max_size=3), max_size=6), st.text(max_size=2)),
            "junk": st.integers(),
        },
    ),
    hot=st.booleans(),
)
def test_single_record_path_equals_the_general_path(row: dict[str, Any], hot: bool) -> None:
    """Property: one record encodes (tensors, unknown keys, archived hashes) as the batch path does,
    or fails with the same error."""
    if not hot:
        _clear_cache()
    try:
        expected = _general(_ONE_SPEC, [row])
    except FeatureError as exc:
        with pytest.raises(FeatureError, match=re.escape(str(exc))):
            transforms.transform_record_columns(_ONE_SPEC, [row])
        return
    got = transforms.transform_record_columns(_ONE_SPEC, [row])
    assert _equal(got[0], expected[0])
    assert got[0].cat.dtype == expected[0].cat.dtype and got[0].num.dtype == expected[0].num.dtype
    assert got[0].multi.shape == expected[0].multi.shape and got[0].num.shape == expected[0].num.shape
    assert got[1] == expected[1]
    assert _same_read(got[2], expected[2])


def test_common_single_records_take_the_single_record_path() -> None:
    rows = [
        {"user_id": "u1", "device": 3, "price": 2.5, "age": 7, "tags": ["a", "b", "c", "d"]},
        {"user_id": None, "tags": None, "price": None, "other": 1},
        {"tags": []},
    ]
    for row in rows:
        _clear_cache()
        for _ in range(2):  # memo misses first, then every value remembered (each its own branch)
            one = transforms._one_record(_ONE_SPEC, row)
            assert one is not None
            expected = _general(_ONE_SPEC, [row])
            assert _equal(one[0], expected[0]) and one[1] == expected[1] and _same_read(one[2], expected[2])
    assert transforms._one_record(_ONE_SPEC, {"device": True}) is None  # booleans: the general path


def test_large_batches_hash_directly_and_agree_with_the_memo(
    spec: FeatureSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From ``DIRECT_HASH_MIN`` strings on every value is hashed without the memo: same tensors and
    archived hashes as through the memo (cold and hot) and as the Arrow path, nulls included."""
    spec = _fitted(spec)
    rng = np.random.default_rng(3)
    records: list[dict[str, Any]] = []
    for i in range(120):
        rec: dict[str, Any] = {
            "user_id": int(rng.integers(1000)),
            "device": f"d{rng.integers(9)}",
            "price": i * 0.25,
        }
        rec["tags"] = [f"t{rng.integers(40)}" for _ in range(int(rng.integers(0, 4)))]
        if i % 6 == 0:
            rec["device"] = None
        records.append(rec)
    direct = transforms.transform_record_columns(spec, records)
    assert len(direct[2].hashes) >= transforms.DIRECT_HASH_MIN
    _clear_cache()
    assert len(transforms._hash_cache) == 1
    transforms.transform_record_columns(spec, records)
    assert len(transforms._hash_cache) == 1  # the memo is neither read nor filled for such a batch
    monkeypatch.setattr(transforms, "DIRECT_HASH_MIN", 10**9)
    for _ in range(2):  # cold memo, then hot
        memo = transforms.transform_record_columns(spec, records)
        assert _equal(direct[0], memo[0]) and _same_read(direct[2], memo[2])
    assert _equal(direct[0], transform(spec, records_to_batch(spec, records)))


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "user_id": st.one_of(st.none(), st.text(max_size=6), st.integers(-5, 5)),
                "device": st.one_of(st.none(), st.sampled_from(["a", "b", "ünï", ""])),
                "price": st.one_of(_num_value, st.booleans()),
                "age": st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False, width=64)),
                "tags": st.one_of(_multi_value, st.lists(st.text(max_size=3), max_size=6)),
            },
        ),
        min_size=2,
        max_size=12,
    ),
    hot=st.booleans(),
)
def test_plain_columns_encode_as_the_general_path(rows: list[dict[str, Any]], hot: bool) -> None:
    """Property: when the column reader takes a batch, it encodes (tensors, no unknown keys, archived
    hashes) exactly as the general path does; it declines what is not plain or over the limits."""
    if not hot:
        _clear_cache()
    columns = transforms.plain_record_columns(_ONE_SPEC, rows, max_string=4, max_list=5)
    if columns is None:
        return
    expected = _general(_ONE_SPEC, rows)
    got = transforms.transform_record_columns(_ONE_SPEC, rows, columns)
    assert _equal(got[0], expected[0]) and got[1] == expected[1] == ()
    assert got[0].multi.shape == expected[0].multi.shape and got[0].num.dtype == expected[0].num.dtype
    assert _same_read(got[2], expected[2])
    assert all(len(v) <= 4 for v in chain(*columns.cat, *(f for f, _ in columns.multi)) if v is not None)
    assert all(int(lengths.max(initial=0)) <= 5 for _, lengths in columns.multi)


def test_plain_columns_take_plain_batches_only() -> None:
    plain = [{"user_id": "u1", "price": 2.5, "age": 3, "tags": ["a", "b"]}, {"device": None, "tags": None}]
    assert transforms.plain_record_columns(_ONE_SPEC, plain, 1024, 256) is not None
    for extra in (
        {"user_id": 7},  # an integer id: canonicalized by the general path
        {"price": True},
        {"price": 2**63},
        {"tags": "a"},
        {"tags": [None]},
        {"other": "x"},  # an unknown key
        {"user_id": "x" * 1025},
        {"tags": ["a"] * 257},
    ):
        assert transforms.plain_record_columns(_ONE_SPEC, [*plain, extra], 1024, 256) is None, extra


@pytest.mark.parametrize("missing", [False, True])
@pytest.mark.parametrize("null", [False, True])
def test_plain_columns_of_large_batches_encode_as_the_general_path(missing: bool, null: bool) -> None:
    """Batches past ``DIRECT_HASH_MIN`` strings (hashed directly), every feature present (read by one
    ``itemgetter`` call a record) or not (one pass a feature), with null categorical values or none
    (then no string is looked at for None): the same encoding as the general path."""
    n = transforms.DIRECT_HASH_MIN
    rows: list[dict[str, Any]] = [
        {"user_id": f"u{i}", "device": f"d{i % 3}", "price": i / 3, "age": i, "tags": [f"t{i % 7}"] * (i % 4)}
        for i in range(n)
    ]
    if null:
        rows[5]["user_id"] = None
    if missing:
        del rows[7]["device"], rows[8]["tags"]
    columns = transforms.plain_record_columns(_ONE_SPEC, rows, 1024, 256)
    assert columns is not None and columns.nulls == (null or missing)
    expected = _general(_ONE_SPEC, rows)
    got = transforms.transform_record_columns(_ONE_SPEC, rows, columns)
    assert _equal(got[0], expected[0]) and got[1] == expected[1] == ()
    assert _same_read(got[2], expected[2])
    rows[9]["other"] = 1  # an unknown key, whichever way the columns are read
    assert transforms.plain_record_columns(_ONE_SPEC, rows, 1024, 256) is None
