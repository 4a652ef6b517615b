"""Record batches to tensors: the one code path shared by training, serving and batch inference.

Categorical values are canonicalized to strings (integers as decimal strings, so ``42`` and ``"42"``
land in the same bucket), hashed with a seeded SipHash-2-4 (``pandas.util.hash_array``: fixed key, no
per-process randomization, unlike Python's ``hash``) and folded into ``1 .. buckets-1``. Bucket 0 is
reserved for missing and null values, and is also the padding of multi-valued fields.
Numeric values become ``log1p(max(x, 0))`` standardized with the spec's frozen statistics; null or
non-finite values become exactly 0 (the standardized mean), so the result is deterministic.
"""

from __future__ import annotations

import enum
import functools
import json
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from itertools import chain, compress, repeat
from operator import is_not, itemgetter
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pandas.util import hash_array

from reloop_service.data.spec import FeatureSpec

if TYPE_CHECKING:  # torch loads only where tensors are made: the log commands never need it
    import torch

__all__ = [
    "FeatureBatch",
    "FeatureError",
    "bucketize",
    "canonical_strings",
    "fit_numeric",
    "labels_of",
    "plain_record_columns",
    "records_to_batch",
    "stable_hash",
    "transform",
    "transform_record_columns",
    "transform_records",
    "unknown_keys",
]

# SipHash key; changing it changes every bucket of every trained model, so it is frozen forever.
_HASH_KEY = "0123456789123456"
_UNKNOWN_KEYS_META = b"reloop.unknown_keys"


class FeatureError(ValueError):
    """A feature value cannot be encoded; the message names the field (and record, when known)."""


@dataclass
class FeatureBatch:
    """Model inputs for B rows.

    cat:   LongTensor  [B, n_cat]            bucket ids, 0 = missing
    multi: LongTensor  [B, n_multi, max_len] bucket ids, 0 = padding/missing; max_len is the largest
                                             ``max_len`` among multi fields (shorter fields are 0-padded)
    num:   FloatTensor [B, n_num]            standardized log1p values, 0 = missing
    """

    cat: torch.Tensor
    multi: torch.Tensor
    num: torch.Tensor

    def __len__(self) -> int:
        return int(self.cat.shape[0])

    def to(self, device: torch.device | str) -> FeatureBatch:
        """Move every tensor to ``device`` (no copy when already there)."""
        return FeatureBatch(cat=self.cat.to(device), multi=self.multi.to(device), num=self.num.to(device))


# --- hashing -----------------------------------------------------------------------------------------
def _canonical_py(value: Any, name: str) -> str | None:
    """Python-side canonical string of one categorical value (same result as the Arrow path)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return None
        if math.isfinite(value) and float(value).is_integer():
            return str(int(value))
        return str(pc.cast(pa.scalar(float(value)), pa.string()).as_py())
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise FeatureError(f"field {name!r}: expected a string or integer, got {type(value).__name__}")


def canonical_strings(arr: pa.Array | pa.ChunkedArray, name: str) -> pa.Array:
    """Arrow-side canonicalization of a categorical column to ``string`` (nulls kept)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.dictionary_decode()
        t = arr.type
    if pa.types.is_string(t):
        return arr
    if pa.types.is_large_string(t) or pa.types.is_string_view(t) or pa.types.is_integer(t):
        return pc.cast(arr, pa.string())
    if pa.types.is_boolean(t):
        return pc.cast(arr, pa.string())
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return pc.cast(arr, pa.string())
    if pa.types.is_floating(t):
        arr = pc.cast(arr, pa.float64())
        arr = pc.if_else(pc.is_nan(arr), pa.scalar(None, pa.float64()), arr)
        integral = pc.and_(pc.equal(pc.floor(arr), arr), pc.less(pc.abs(arr), 2.0**63))
        as_int = pc.cast(pc.if_else(integral, arr, 0.0), pa.int64(), safe=False)
        return pc.if_else(integral, pc.cast(as_int, pa.string()), pc.cast(arr, pa.string()))
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.string())
    raise FeatureError(f"field {name!r}: cannot use Arrow type {t} as a categorical value")


_DICT_ENCODE_MIN = 512  # below this, hashing every value beats a dictionary-encode round trip


def _siphash(values: np.ndarray) -> np.ndarray:
    """SipHash-2-4 (fixed key) of an object array of str, then pandas' 64-bit mixing -> uint64."""
    return np.asarray(
        hash_array(values, encoding="utf8", hash_key=_HASH_KEY, categorize=False), dtype=np.uint64
    )


def _hash_strings(arr: pa.Array) -> np.ndarray:
    """SipHash of each string of an Arrow string array; nulls give 0 (callers mask them)."""
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    if n < _DICT_ENCODE_MIN:
        values = arr.to_numpy(zero_copy_only=False)
        if arr.null_count:
            valid = arr.is_valid().to_numpy(zero_copy_only=False)
            out = np.zeros(n, dtype=np.uint64)
            out[valid] = _siphash(values[valid])
            return out
        return _siphash(values)
    # Large batches repeat values (popular items, small context vocabularies): hash each once.
    encoded = pc.dictionary_encode(arr, null_encoding="mask")
    dictionary = encoded.dictionary.to_numpy(zero_copy_only=False)
    if len(dictionary) == 0:
        return np.zeros(n, dtype=np.uint64)
    uniques = _siphash(dictionary)
    indices = encoded.indices
    if indices.null_count:
        idx = pc.fill_null(indices, 0).to_numpy()
        out = uniques[idx]
        out[indices.is_null().to_numpy(zero_copy_only=False)] = 0
        return out
    return uniques[indices.to_numpy()]


def stable_hash(values: pa.Array | pa.ChunkedArray | np.ndarray | Sequence[Any]) -> np.ndarray:
    """uint64 hash of each value's canonical string; identical on every process, machine and version.

    Integers hash as their decimal strings. Nulls give 0 (never a valid hash in practice; callers
    map them to the reserved bucket themselves).
    """
    if isinstance(values, pa.Array | pa.ChunkedArray):
        arr = canonical_strings(values, "values")
    elif isinstance(values, np.ndarray) and values.dtype != object:
        arr = canonical_strings(pa.array(values), "values")
    else:
        arr = pa.array([_canonical_py(v, "values") for v in values], type=pa.string())
    return _hash_strings(arr)


def bucketize(hashes: np.ndarray, valid: np.ndarray, buckets: int | np.ndarray) -> np.ndarray:
    """Fold hashes into ``1 .. buckets-1`` and put invalid (null) entries in bucket 0 -> int64."""
    b = np.asarray(buckets, dtype=np.uint64)
    out = (hashes % (b - np.uint64(1)) + np.uint64(1)).astype(np.int64)
    out[~valid] = 0
    return out


# --- transform ---------------------------------------------------------------------------------------
def _column(batch: pa.RecordBatch | pa.Table, name: str) -> pa.Array | pa.ChunkedArray:
    idx = batch.schema.get_field_index(name)
    if idx < 0:
        raise FeatureError(f"field {name!r}: column missing from the batch")
    return batch.column(idx)


def transform(spec: FeatureSpec, batch: pa.RecordBatch | pa.Table) -> FeatureBatch:
    """Encode the spec's feature columns of ``batch`` into a ``FeatureBatch`` (extra columns ignored)."""
    n = batch.num_rows
    # All categorical values and all multi-valued elements are hashed in one call: one dictionary
    # encode and one SipHash pass per batch keeps small serving batches cheap.
    pieces: list[pa.Array] = []
    piece_buckets: list[tuple[int, int]] = []  # (length, buckets)
    multi_meta: list[tuple[np.ndarray, np.ndarray, int]] = []  # (row index, position, max_len)
    for f in spec.categorical:
        s = canonical_strings(_column(batch, f.name), f.name)
        pieces.append(s)
        piece_buckets.append((len(s), f.buckets))
    for m in spec.multi:
        col = _column(batch, m.name)
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if pa.types.is_null(col.type):
            values = pa.array([], pa.string())
            rows = np.zeros(0, dtype=np.int64)
            pos = np.zeros(0, dtype=np.int64)
        else:
            if not (
                pa.types.is_list(col.type)
                or pa.types.is_large_list(col.type)
                or pa.types.is_fixed_size_list(col.type)
            ):
                raise FeatureError(f"field {m.name!r}: expected a list column, got Arrow type {col.type}")
            values = canonical_strings(pc.list_flatten(col), m.name)
            rows, pos = _list_positions(col)
        pieces.append(values)
        piece_buckets.append((len(values), m.buckets))
        multi_meta.append((rows, pos, m.max_len))
    if pieces:
        joined = pa.concat_arrays(pieces) if len(pieces) > 1 else pieces[0]
        hashes = _hash_strings(joined)
        valid = joined.is_valid().to_numpy(zero_copy_only=False)
    else:
        hashes, valid = np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=bool)
    _require_fitted(spec)
    numeric = [_numeric_values(_column(batch, nf.name), nf.name) for nf in spec.numeric]
    return _encode(spec, n, hashes, valid, piece_buckets, multi_meta, numeric)


def _require_fitted(spec: FeatureSpec) -> None:
    for nf in spec.numeric:
        if nf.mean is None or nf.std is None:
            raise FeatureError(
                f"field {nf.name!r}: numeric statistics are not fitted; call fit_numeric on training data"
            )


def _encode(
    spec: FeatureSpec,
    n: int,
    hashes: np.ndarray,
    valid: np.ndarray,
    piece_buckets: Sequence[tuple[int, int]],
    multi_meta: Sequence[tuple[np.ndarray, np.ndarray, int]],
    numeric: Sequence[np.ndarray],
) -> FeatureBatch:
    """The shared core of ``transform`` and ``transform_records``: hashes and values -> tensors.

    ``hashes``/``valid`` [K]: every categorical value (field by field, ``n`` each) then every
    multi-valued element (field by field), with ``piece_buckets`` giving (length, buckets) per field;
    ``multi_meta`` the (row, position, max_len) of each multi field's elements; ``numeric`` the
    ``log1p(max(x, 0))`` float64 [n] of each numeric field (NaN for missing).
    """
    n_cat = len(spec.categorical)
    width = max((m.max_len for m in spec.multi), default=0)
    multi = np.zeros((n, len(spec.multi), width), dtype=np.int64)
    if piece_buckets:
        bucket_per_value = np.repeat(
            np.array([b for _, b in piece_buckets], dtype=np.uint64),
            np.array([k for k, _ in piece_buckets], dtype=np.int64),
        )
        ids = bucketize(hashes, valid, bucket_per_value)
        offset = n * n_cat
        cat = np.ascontiguousarray(ids[:offset].reshape(n_cat, n).T)  # field-major -> [n, n_cat]
        for j, (rows, pos, max_len) in enumerate(multi_meta):
            k = len(rows)
            part = ids[offset : offset + k]
            offset += k
            keep = pos < max_len
            multi[rows[keep], j, pos[keep]] = part[keep]
    else:
        cat = np.zeros((n, n_cat), dtype=np.int64)

    num = np.zeros((n, len(spec.numeric)), dtype=np.float32)
    for j, (nf, x) in enumerate(zip(spec.numeric, numeric, strict=True)):
        z = (x - nf.mean) / nf.std  # type: ignore[operator]  # _require_fitted checked both
        z[np.isnan(z)] = 0.0
        num[:, j] = z
    import torch

    return FeatureBatch(cat=torch.from_numpy(cat), multi=torch.from_numpy(multi), num=torch.from_numpy(num))


def _list_positions(col: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Row index and position inside its list of every flattened element (nulls are empty lists)."""
    if pa.types.is_fixed_size_list(col.type):
        parents = pc.list_parent_indices(col).to_numpy().astype(np.int64, copy=False)
        lengths = np.bincount(parents, minlength=len(col)).astype(np.int64)
    else:
        offsets = col.offsets.to_numpy().astype(np.int64, copy=False)
        lengths = np.diff(offsets)
        if col.null_count:
            # A null list may still own a (non-flattened) offset range; list_flatten skips it.
            lengths = np.where(col.is_valid().to_numpy(zero_copy_only=False), lengths, 0)
    return _positions(lengths)


def _positions(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row index and position inside its row of every element, from per-row lengths int64 [n]."""
    rows = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    starts = np.cumsum(lengths) - lengths
    pos = np.arange(len(rows), dtype=np.int64) - starts[rows]
    return rows, pos


def _numeric_values(col: pa.Array | pa.ChunkedArray, name: str) -> np.ndarray:
    """``log1p(max(x, 0))`` as float64, NaN where the value is null or not finite."""
    t = col.type
    if not (
        pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)
    ):
        raise FeatureError(f"field {name!r}: numeric field has Arrow type {t}")
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if t != pa.float64():
        col = pc.cast(col, pa.float64())
    return _log1p_nonneg(np.array(col.to_numpy(zero_copy_only=False), dtype=np.float64))


def _log1p_nonneg(x: np.ndarray) -> np.ndarray:
    """``log1p(max(x, 0))`` of float64 [n] in place; NaN where x is NaN or not finite."""
    x[~np.isfinite(x)] = np.nan
    with np.errstate(invalid="ignore"):
        return np.log1p(np.maximum(x, 0.0))


def labels_of(spec: FeatureSpec, batch: pa.RecordBatch | pa.Table) -> torch.Tensor:
    """Labels as FloatTensor [B]; ingestion guarantees they are non-null 0/1."""
    col = _column(batch, spec.label)
    if col.null_count:
        raise FeatureError(
            f"field {spec.label!r}: null labels in a training batch (ingest quarantines these)"
        )
    y = pc.cast(col, pa.float32()).to_numpy(zero_copy_only=False)
    import torch

    return torch.from_numpy(np.array(y, dtype=np.float32))


def fit_numeric(spec: FeatureSpec, batches: Iterable[pa.RecordBatch]) -> FeatureSpec:
    """Fit mean/std of ``log1p(max(x, 0))`` for numeric fields that have none; fitted ones stay frozen.

    One streaming pass (Chan's parallel variance), so memory is bounded by the batch size. A field with
    no finite values or zero variance gets std 1.0 so transforms stay finite.
    """
    todo = [f.name for f in spec.numeric if not f.is_fitted]
    if not todo:
        return spec
    count = dict.fromkeys(todo, 0)
    mean = dict.fromkeys(todo, 0.0)
    m2 = dict.fromkeys(todo, 0.0)
    for batch in batches:
        for name in todo:
            x = _numeric_values(_column(batch, name), name)
            x = x[~np.isnan(x)]
            k = int(x.size)
            if k == 0:
                continue
            bm = float(x.mean())
            bm2 = float(((x - bm) ** 2).sum())
            n0 = count[name]
            total = n0 + k
            delta = bm - mean[name]
            mean[name] += delta * k / total
            m2[name] += bm2 + delta * delta * n0 * k / total
            count[name] = total
    stats: dict[str, tuple[float, float]] = {}
    for name in todo:
        std = math.sqrt(m2[name] / count[name]) if count[name] else 0.0
        stats[name] = (mean[name], std if std > 1e-12 else 1.0)
    return spec.with_numeric_stats(stats)


# --- serving input -----------------------------------------------------------------------------------
# Request records are read column by column into Python lists of canonical strings (the same rules as
# ``canonical_strings``: ``_canonical_py``), hashed with the same SipHash (``_siphash``) and encoded by
# the same ``_encode`` as ``transform``. ``records_to_batch`` builds Arrow columns from the very same
# lists, so ``transform(records_to_batch(r)) == transform_records(r)`` by construction.

HASH_CACHE_SIZE = 1 << 17
"""Distinct canonical strings whose hash is remembered (hot ids repeat across requests)."""

_hash_cache: dict[str | None, int] = {None: 0}
_hash_cache_lock = threading.Lock()
_NONE = type(None)
_STR_OR_NONE = frozenset({str, _NONE})
_STR_ONLY = frozenset({str})
_LIST_OR_NONE = frozenset({list, _NONE})
_NUMBER_KINDS = frozenset({float, int, bool, _NONE})
_LIST_ONLY = frozenset({list})


DIRECT_HASH_MIN = 128
"""From this many strings on, ``_cached_hashes`` hashes them all with SipHash instead of asking the memo."""


def _cached_hashes(strings: list[str | None], nulls: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 hashes, valid) of canonical strings; nulls hash to 0 and are invalid.

    A bounded memo in front of ``_siphash``: hashes are pure functions of the string, so a hit
    returns exactly what hashing again would. One C-level pass reads the memo with 0 for a miss;
    only the zeros (nulls, misses, and a string whose hash really is 0) are looked at one by one,
    and the misses hashed in one vectorized call. When the memo is full it is emptied (bounded
    memory; hot values return within a few requests).

    From ``DIRECT_HASH_MIN`` strings on (a batch of ~12 items of the demo spec) every string is
    hashed instead: SipHash in C costs ~75-130 ns a string whatever came before, while a memo
    lookup of a fresh string object costs ~100 ns warm and ~250 ns once the memo outgrows the
    caches (batch 100 in the server: 147 against 273 µs for 1,106 strings), and a memo that
    thrashes (more distinct values than it holds) pays a miss, a hash and an insert per value.
    Below that the memo wins (3.5 against 5.8 µs for 8 strings).

    ``nulls=False``: the caller knows no string is None (skips looking for them).
    """
    n = len(strings)
    if n >= DIRECT_HASH_MIN:
        if nulls:
            valid = np.fromiter(map(is_not, strings, repeat(None)), dtype=bool, count=n)
        else:
            valid = np.ones(n, dtype=bool)
        values = np.array(strings, dtype=object)
        if not nulls or valid.all():
            return _siphash(values), valid
        hashes = np.zeros(n, dtype=np.uint64)
        if valid.any():
            hashes[valid] = _siphash(values[valid])
        return hashes, valid
    hashes = np.fromiter(map(_hash_cache.get, strings, repeat(0)), dtype=np.uint64, count=n)
    valid = np.ones(n, dtype=bool)
    zeros = np.flatnonzero(hashes == 0)
    if zeros.size:
        todo: list[int] = []
        for i in zeros.tolist():
            if strings[i] is None:
                valid[i] = False
            else:
                todo.append(i)
        if todo:
            missing = list(dict.fromkeys(strings[i] for i in todo))
            hashed = _siphash(np.array(missing, dtype=object)).tolist()
            with _hash_cache_lock:
                if len(_hash_cache) + len(missing) > HASH_CACHE_SIZE:
                    _hash_cache.clear()
                    _hash_cache[None] = 0
                _hash_cache.update(zip(missing, hashed, strict=True))
            local = dict(zip(missing, hashed, strict=True))
            hashes[todo] = np.array([local[strings[i]] for i in todo], dtype=np.uint64)
    return hashes, valid


def _canonical_list(values: list[Any], name: str, record_of: Any = None) -> list[str | None]:
    """Canonical strings (or None) of one field's values; errors name the record and field."""
    kinds = set(map(type, values))
    if kinds <= _STR_OR_NONE:
        return values
    out: list[str | None] = []
    for i, v in enumerate(values):
        simple = _simple_string(v)
        if simple is not _NOT_SIMPLE:
            out.append(simple)
            continue
        try:
            out.append(_canonical_py(v, name))
        except FeatureError as exc:
            record = i if record_of is None else record_of(i)
            raise FeatureError(f"record {record}: {exc}") from None
    return out


class _Simple(enum.Enum):
    NOT = 0  # the value needs the general canonicalization


_NOT_SIMPLE: Final = _Simple.NOT


def _simple_string(value: Any) -> str | Literal[_Simple.NOT] | None:
    """The canonical string of a string or an int, None for None; ``_NOT_SIMPLE`` for anything else."""
    kind = type(value)
    if kind is str or value is None:
        return value
    if kind is int:
        return str(value)
    return _NOT_SIMPLE


def _float_list(values: list[Any], name: str) -> np.ndarray:
    """float64 [n] of one numeric field's values (None -> NaN; booleans 1/0, as in Arrow)."""
    kinds = set(map(type, values))
    if kinds <= _NUMBER_KINDS:
        if _NONE in kinds:
            values = [math.nan if v is None else v for v in values]
        try:
            return np.array(values, dtype=np.float64)
        except OverflowError:
            pass
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        if v is None:
            out[i] = math.nan
        elif isinstance(v, int | float | np.number):
            try:
                out[i] = float(v)
            except OverflowError:
                raise FeatureError(f"record {i}: field {name!r}: number out of range: {v!r}") from None
        else:
            raise FeatureError(f"record {i}: field {name!r}: expected a number, got {v!r}")
    return out


def _multi_lists(values: list[Any], name: str) -> tuple[list[str | None], np.ndarray]:
    """Flattened canonical elements and per-row lengths int64 [n] of one multi-valued field.

    A list (or other sequence) gives its elements; a scalar gives a one-element list; None none.
    """
    if set(map(type, values)) == _LIST_ONLY:  # the common case: every row sent a list
        flat_ = list(chain.from_iterable(values))
        lens_ = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        if flat_:

            def row_of(k: int) -> int:  # only on errors
                return int(np.searchsorted(np.cumsum(lens_), k, side="right"))

            return _canonical_list(flat_, name, row_of), lens_
        return [], lens_
    flat: list[Any] = []
    lengths: list[int] = []
    for i, v in enumerate(values):
        kind = type(v)
        if kind is list:
            flat.extend(v)
            lengths.append(len(v))
        elif v is None:
            lengths.append(0)
        elif isinstance(v, str | int | float | bool | bytes | np.generic):
            flat.append(v)
            lengths.append(1)
        elif isinstance(v, Sequence | np.ndarray):
            flat.extend(list(v))
            lengths.append(len(v))
        else:
            raise FeatureError(
                f"record {i}: field {name!r}: expected a list of strings, got {type(v).__name__}"
            )
    lens = np.array(lengths, dtype=np.int64)
    if flat:

        def record_of(k: int) -> int:  # only on errors
            return int(np.searchsorted(np.cumsum(lens), k, side="right"))

        return _canonical_list(flat, name, record_of), lens
    return [], lens


_known_by_spec: dict[int, tuple[FeatureSpec, frozenset[str]]] = {}


def _known_keys(spec: FeatureSpec) -> frozenset[str]:
    """Record keys that are not unknown. Memo by identity: hashing a spec walks all its fields."""
    entry = _known_by_spec.get(id(spec))
    if entry is None or entry[0] is not spec:
        if len(_known_by_spec) > 64:
            _known_by_spec.clear()
        known = frozenset(spec.feature_names) | {spec.label, spec.impression_id, spec.event_time}
        entry = _known_by_spec[id(spec)] = (spec, known)
    return entry[1]


def _unknown(spec: FeatureSpec, records: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    if not records:
        return ()
    return tuple(sorted(set().union(*records) - _known_keys(spec)))


@dataclass
class RecordColumns:
    """One request's feature columns as Python lists of canonical values (see ``_record_columns``).

    None of them aliases the records' own lists, so they outlive changes to the records (the
    archive keeps them until its next flush).
    """

    n: int
    cat: list[list[str | None]]
    multi: list[tuple[list[str | None], np.ndarray]]  # (flat elements, lengths [n])
    numeric: list[np.ndarray]  # float64 [n], NaN for missing
    nulls: bool = True  # False: no categorical value or element is None (every string is valid)


def _field(records: Sequence[Mapping[str, Any]], name: str) -> list[Any]:
    """One field of every record (None where missing), read by a C-level map (no Python loop)."""
    try:
        return list(map(dict.get, records, repeat(name)))  # type: ignore[arg-type]
    except TypeError:  # a Mapping that is not a dict
        return [r.get(name) for r in records]


def _record_columns(spec: FeatureSpec, records: Sequence[Mapping[str, Any]]) -> RecordColumns:
    """Read and canonicalize every feature column of the records (missing key or None: null)."""
    cat = [_canonical_list(_field(records, f.name), f.name) for f in spec.categorical]
    multi = [_multi_lists(_field(records, m.name), m.name) for m in spec.multi]
    numeric = [_float_list(_field(records, nf.name), nf.name) for nf in spec.numeric]
    return RecordColumns(n=len(records), cat=cat, multi=multi, numeric=numeric)


@dataclass(frozen=True)
class _PlainPlan:
    """What ``plain_record_columns`` needs of a spec, read once (specs are frozen)."""

    spec: FeatureSpec
    names: frozenset[str]
    cat: tuple[str, ...]
    multi: tuple[str, ...]
    numeric: tuple[str, ...]
    longest_name: int
    getter: Any  # operator.itemgetter of every feature name (None for fewer than two)


_plain_plans: dict[int, _PlainPlan] = {}
_FLOAT_INT_NONE = frozenset({float, int, _NONE})
_I64 = 2**63


def _plain_plan(spec: FeatureSpec) -> _PlainPlan:
    plan = _plain_plans.get(id(spec))
    if plan is not None and plan.spec is spec:
        return plan
    if len(_plain_plans) > 64:
        _plain_plans.clear()
    names = (
        *(f.name for f in spec.categorical),
        *(m.name for m in spec.multi),
        *(f.name for f in spec.numeric),
    )
    plan = _plain_plans[id(spec)] = _PlainPlan(
        spec=spec,
        names=frozenset(spec.feature_names),
        cat=tuple(f.name for f in spec.categorical),
        multi=tuple(m.name for m in spec.multi),
        numeric=tuple(f.name for f in spec.numeric),
        longest_name=max(map(len, spec.feature_names), default=0),
        getter=itemgetter(*names) if len(names) > 1 else None,
    )
    return plan


def _present(
    col: list[Any], only: AbstractSet[object], allowed: AbstractSet[object]
) -> tuple[list[Any], bool] | None:
    """The non-null values of ``col`` and whether it had nulls, if every value's type is in
    ``allowed`` (``only`` when there is no null); None for any other type (the general path decides)."""
    kinds = set(map(type, col))
    if kinds == only:
        return col, False
    if kinds <= allowed:
        return list(compress(col, map(is_not, col, repeat(None)))), True
    return None


def plain_record_columns(
    spec: FeatureSpec, records: list[dict[str, Any]], max_string: int, max_list: int
) -> RecordColumns | None:
    """``_record_columns`` of request items in one pass per field, checking them as it reads them.

    Only for the plain shape of a request (``None`` for anything else, which the caller sends down
    the general path): every key of every record is a feature of the spec; categorical values are
    strings or None; multi-valued values are lists of strings; numeric values are floats, integers
    within int64 or None; no string (key, value or element) longer than ``max_string`` and no list
    longer than ``max_list``. Such records hold no unknown keys and need no canonicalization, so
    the columns are the values as read (fresh lists: nothing aliases the records).
    """
    plan = _plain_plan(spec)
    if not records or plan.longest_name > max_string:
        return None
    table = _plain_table(plan, records)
    if table is None:
        return None
    read = iter(table)
    col: list[Any]
    strings: list[Any]
    lists: list[Any]
    cat: list[list[str | None]] = []
    nulls = False
    for _ in plan.cat:
        col = next(read)
        found = _present(col, _STR_ONLY, _STR_OR_NONE)
        if found is None:
            return None
        strings, had_null = found
        nulls = nulls or had_null
        if strings and max(map(len, strings)) > max_string:
            return None
        cat.append(col)
    multi: list[tuple[list[str | None], np.ndarray]] = []
    for name in plan.multi:
        col = next(read)
        found = _present(col, _LIST_ONLY, _LIST_OR_NONE)
        if found is None:
            return None
        lists = found[0]
        if lists and max(map(len, lists)) > max_list:
            return None
        flat = list(chain.from_iterable(lists))
        if flat and (set(map(type, flat)) != _STR_ONLY or max(map(len, flat)) > max_string):
            return None
        if lists is col:
            multi.append((flat, np.fromiter(map(len, col), dtype=np.int64, count=len(col))))
        else:  # missing or null bags: no elements
            multi.append(_multi_lists(col, name))
    numeric: list[np.ndarray] = []
    for name in plan.numeric:
        col = next(read)
        kinds = set(map(type, col))
        if not kinds <= _FLOAT_INT_NONE:
            return None
        if int in kinds:
            ints = [v for v in col if type(v) is int]
            if min(ints) < -_I64 or max(ints) >= _I64:
                return None
        numeric.append(_float_list(col, name))
    return RecordColumns(n=len(records), cat=cat, multi=multi, numeric=numeric, nulls=nulls)


def _plain_table(plan: _PlainPlan, records: list[dict[str, Any]]) -> list[list[Any]] | None:
    """Every feature's column (categorical, multi-valued, numeric: the plan's order; None where a
    record lacks the key), or ``None`` when some record holds a key that is not a feature.

    Records holding every feature are read by one ``itemgetter`` call each and transposed by
    ``zip``; otherwise one ``dict.get`` pass per feature.
    """
    names = (*plan.cat, *plan.multi, *plan.numeric)
    if plan.getter is not None:
        try:
            rows = list(map(plan.getter, records))
        except KeyError:  # some record lacks a feature
            pass
        else:  # each record holds every feature: more keys than that are unknown ones
            if max(map(len, records)) != len(names):
                return None
            return [list(col) for col in zip(*rows, strict=True)]
    if not set().union(*records) <= plan.names:
        return None
    get = dict.get
    return [list(map(get, records, repeat(name))) for name in names]


def transform_records(
    spec: FeatureSpec, records: Sequence[Mapping[str, Any]]
) -> tuple[FeatureBatch, tuple[str, ...]]:
    """Encode request records like ``transform(spec, records_to_batch(spec, records))``, without Arrow.

    Serving's hot path: the same canonicalization, hashing (through a bounded memo of hot values) and
    ``_encode`` as ``transform``. Returns the batch and the distinct record keys that are not
    features (ignored; serving counts them). Raises ``FeatureError`` naming record and field.
    """
    batch, unknown, _ = transform_record_columns(spec, records)
    return batch, unknown


@dataclass
class RecordHashes:
    """What ``transform_record_columns`` read, before the fold into buckets (what serving archives).

    ``hashes`` / ``valid`` [K]: SipHash of each categorical value (field by field, ``n`` each), then
    of each multi-valued element (field by field); ``multi_lengths`` int64 [n] per multi field;
    ``numeric`` float64 [n] per numeric field as sent (NaN for missing). Fresh arrays: nothing
    aliases the records.
    """

    n: int
    hashes: np.ndarray
    valid: np.ndarray
    numeric: list[np.ndarray]
    multi_lengths: list[np.ndarray]


def transform_record_columns(
    spec: FeatureSpec, records: Sequence[Mapping[str, Any]], columns: RecordColumns | None = None
) -> tuple[FeatureBatch, tuple[str, ...], RecordHashes]:
    """``transform_records``, also returning the hashes and numbers it read (``RecordHashes``).

    ``columns``: the records' ``plain_record_columns`` when the caller already read them (such
    records have no unknown keys).
    """
    if columns is not None:
        return _transform_columns(spec, columns, ())
    if len(records) == 1:
        one = _one_record(spec, records[0])
        if one is not None:
            return one
    return _transform_columns(spec, _record_columns(spec, records), None, records)


def _transform_columns(
    spec: FeatureSpec,
    cols: RecordColumns,
    unknown: tuple[str, ...] | None,
    records: Sequence[Mapping[str, Any]] = (),
) -> tuple[FeatureBatch, tuple[str, ...], RecordHashes]:
    """Hash, fold and standardize read columns (``unknown`` None: computed from ``records``)."""
    n = cols.n
    strings: list[str | None] = []
    piece_buckets: list[tuple[int, int]] = []
    multi_meta: list[tuple[np.ndarray, np.ndarray, int]] = []
    for f, values in zip(spec.categorical, cols.cat, strict=True):
        strings += values
        piece_buckets.append((n, f.buckets))
    for m, (flat, lengths) in zip(spec.multi, cols.multi, strict=True):
        strings += flat
        piece_buckets.append((len(flat), m.buckets))
        rows, pos = _positions(lengths)
        multi_meta.append((rows, pos, m.max_len))
    hashes, valid = _cached_hashes(strings, cols.nulls)
    _require_fitted(spec)
    numeric = [_log1p_nonneg(x.copy()) for x in cols.numeric]
    batch = _encode(spec, n, hashes, valid, piece_buckets, multi_meta, numeric)
    read = RecordHashes(n, hashes, valid, cols.numeric, [lengths for _, lengths in cols.multi])
    return batch, _unknown(spec, records) if unknown is None else unknown, read


@dataclass(frozen=True)
class _OnePlan:
    """What ``_one_record`` needs of a spec, read once (specs are frozen)."""

    spec: FeatureSpec
    cat: tuple[str, ...]
    multi: tuple[str, ...]
    max_len: tuple[int, ...]
    width: int
    moduli: tuple[int, ...]  # buckets - 1 of each categorical field, then of each multi field
    numeric: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    known: frozenset[str]


_one_plans: dict[int, _OnePlan] = {}


def _one_plan(spec: FeatureSpec) -> _OnePlan | None:
    """The spec's plan for single records (``None`` when its numeric statistics are not fitted)."""
    plan = _one_plans.get(id(spec))
    if plan is not None and plan.spec is spec:
        return plan
    if not spec.is_fitted:
        return None
    mean = np.array([f.mean for f in spec.numeric], dtype=np.float64)
    std = np.array([f.std for f in spec.numeric], dtype=np.float64)
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std != 0).all()):
        return None  # statistics that could turn a finite number into NaN: the general path masks it
    if len(_one_plans) > 64:
        _one_plans.clear()
    plan = _one_plans[id(spec)] = _OnePlan(
        spec=spec,
        cat=tuple(f.name for f in spec.categorical),
        multi=tuple(m.name for m in spec.multi),
        max_len=tuple(m.max_len for m in spec.multi),
        width=max((m.max_len for m in spec.multi), default=0),
        moduli=tuple(f.buckets - 1 for f in spec.categorical) + tuple(m.buckets - 1 for m in spec.multi),
        numeric=tuple(f.name for f in spec.numeric),
        mean=mean,
        std=std,
        known=_known_keys(spec),
    )
    return plan


def _one_record(
    spec: FeatureSpec, record: Mapping[str, Any]
) -> tuple[FeatureBatch, tuple[str, ...], RecordHashes] | None:
    """``transform_record_columns`` of one record with plain Python steps (a single-item request).

    The vectorized path pays a fixed cost per NumPy call (~40 of them) that dominates one record;
    here the same canonicalization, memo-backed SipHash, fold into buckets and numeric transform run
    on a dozen values directly. Only the common value types are taken (strings, integers and nulls
    for categorical fields, lists of strings or null for multi-valued ones, numbers or null for
    numeric ones); anything else returns ``None`` and the general path decides, errors included.
    ``tests/data/test_transform_records.py`` checks both paths agree.
    """
    plan = _one_plan(spec)
    if plan is None or type(record) is not dict:
        return None
    get = record.get
    strings: list[str | None] = []
    for name in plan.cat:
        simple = _simple_string(get(name))
        if simple is _NOT_SIMPLE:
            return None
        strings.append(simple)
    lengths: list[int] = []
    for name in plan.multi:
        value = get(name)
        if type(value) is list:
            if value and set(map(type, value)) != _STR_ONLY:
                return None
            strings += value
            lengths.append(len(value))
        elif value is None:
            lengths.append(0)
        else:
            return None
    numbers: list[Any] = []
    finite = True
    for name in plan.numeric:
        value = get(name)
        kind = type(value)
        if type(value) is float:
            numbers.append(value)
            finite = finite and math.isfinite(value)
        elif kind is int:
            numbers.append(value)
        elif value is None:
            numbers.append(math.nan)
            finite = False
        else:
            return None
    try:
        raw = np.array(numbers, dtype=np.float64)
    except OverflowError:
        return None
    n_cat = len(plan.cat)
    moduli = plan.moduli
    fields = chain(range(n_cat), chain.from_iterable(map(repeat, range(n_cat, len(moduli)), lengths)))
    known = list(map(_hash_cache.get, strings, repeat(0)))  # the memo, read as _cached_hashes reads it
    if 0 in known:  # a null, a miss (or a hash that is 0): the memo's own path, which also fills it
        hashes, valid = _cached_hashes(strings)
        ids = [
            h % moduli[k] + 1 if ok else 0
            for k, h, ok in zip(fields, hashes.tolist(), valid.tolist(), strict=True)
        ]
    else:  # every value present and remembered: no NumPy pass over the memo
        hashes = np.array(known, dtype=np.uint64)
        valid = np.ones(len(known), dtype=bool)
        ids = [h % moduli[k] + 1 for k, h in zip(fields, known, strict=True)]
    cat = np.array([ids[:n_cat]], dtype=np.int64).reshape(1, n_cat)
    multi = np.zeros((1, len(plan.multi), plan.width), dtype=np.int64)
    start = n_cat
    for j, (length, max_len) in enumerate(zip(lengths, plan.max_len, strict=True)):
        kept = min(length, max_len)
        if kept:
            multi[0, j, :kept] = ids[start : start + kept]
        start += length
    if finite:  # every number finite: nothing to mask, no NaN can come out
        z = np.log1p(np.maximum(raw, 0.0))
        z -= plan.mean
        z /= plan.std
    else:
        z = _log1p_nonneg(raw.copy())
        z -= plan.mean
        z /= plan.std
        z[np.isnan(z)] = 0.0
    num = z.astype(np.float32).reshape(1, len(plan.numeric))
    unknown = () if plan.known.issuperset(record) else tuple(sorted(record.keys() - plan.known))
    read = RecordHashes(
        1,
        hashes,
        valid,
        [raw[j : j + 1] for j in range(len(plan.numeric))],
        [np.array([length], dtype=np.int64) for length in lengths],
    )
    import torch

    batch = FeatureBatch(cat=torch.from_numpy(cat), multi=torch.from_numpy(multi), num=torch.from_numpy(num))
    return batch, unknown, read


def records_to_batch(spec: FeatureSpec, records: Sequence[Mapping[str, Any]]) -> pa.RecordBatch:
    """Build the spec's feature columns from request records (an Arrow input for ``transform``).

    Missing keys and ``None`` become nulls (bucket 0 / numeric 0). Keys that are neither features nor
    the label/id/time columns are ignored; their distinct names are kept in the schema metadata
    (read them with ``unknown_keys``). Output types are fixed: categorical ``string``, numeric
    ``float64``, multi ``list<string>``. Raises ``FeatureError`` naming record and field on bad values.
    """
    schema = _record_schema(spec)
    cols = _record_columns(spec, records)
    arrays: list[pa.Array] = [pa.array(values, type=pa.string()) for values in cols.cat]
    arrays += [pa.array(x, type=pa.float64(), mask=np.isnan(x)) for x in cols.numeric]
    for flat, lengths in cols.multi:
        offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        arrays.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa.string())))
    unknown = _unknown(spec, records)
    if unknown:
        schema = schema.with_metadata({_UNKNOWN_KEYS_META: json.dumps(list(unknown)).encode()})
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


@functools.lru_cache(maxsize=64)
def _record_schema(spec: FeatureSpec) -> pa.Schema:
    """Output schema of ``records_to_batch`` (cached: specs are frozen)."""
    fields = (
        [pa.field(f.name, pa.string()) for f in spec.categorical]
        + [pa.field(f.name, pa.float64()) for f in spec.numeric]
        + [pa.field(f.name, pa.list_(pa.string())) for f in spec.multi]
    )
    return pa.schema(fields)


def unknown_keys(batch: pa.RecordBatch) -> tuple[str, ...]:
    """Distinct record keys that ``records_to_batch`` ignored (not features of the spec)."""
    meta = batch.schema.metadata or {}
    raw = meta.get(_UNKNOWN_KEYS_META)
    return tuple(json.loads(raw)) if raw else ()
