"""Streaming, validated reads of the click logs ``<root>/dt=YYYY-MM-DD[/hr=HH]/*.parquet``.

A day is the folder ``dt=YYYY-MM-DD``; with sub-daily cycle periods (``data/period.py``) each hour is
``dt=YYYY-MM-DD/hr=HH``. ``open_days`` takes days or ``Period`` values and reads their partitions.

Opening a day range checks every file's schema (footer only) and then makes one streaming pass over
the three columns needed for row checks (impression id, label, event time). Bad rows are written once,
per open, to ``<root>/_quarantine/dt=YYYY-MM-DD/part-NNNNN.parquet`` with a ``reason`` column, and their
positions are remembered so every later ``iter_batches()`` (one per epoch) yields exactly the same valid
rows without re-validating or rewriting anything. Memory is bounded by the batch size and the files'
row-group size (Arrow decodes one row group at a time; this project's writers use 64k-row groups, and
a file with row groups over 1M rows is logged as a warning), plus 16 bytes per row of a day for the
duplicate-id check (a 64-bit stable hash and a row position).

Event time may be a Parquet timestamp (naive means UTC), an ISO-8601 string (``2024-05-01T12:00:00Z``,
with or without offset; without means UTC) or a number of seconds since the Unix epoch. Anything else,
null, or a time outside 1970..2200 is quarantined as ``bad_event_time``.

Valid batches come out with one fixed schema whatever the files used: impression id ``string``, label
``int8`` (0/1), event time ``timestamp[us, UTC]``, categorical features ``string`` (integers as decimal
strings), numeric ``float64``, multi-valued ``list<string>``.
"""

from __future__ import annotations

import logging
import posixpath
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from reloop_service.data.period import Period
from reloop_service.data.spec import FeatureSpec
from reloop_service.data.transforms import FeatureError, canonical_strings, stable_hash
from reloop_service.storage import filesystem, is_local, join

__all__ = [
    "REASONS",
    "DayLog",
    "EmptyDayError",
    "IngestError",
    "IngestReport",
    "day_dir",
    "open_days",
    "output_schema",
    "parse_event_time",
    "quarantine_dir",
]

log = logging.getLogger(__name__)

# Row-level problems, in the order they are checked: a row gets the first that applies.
REASONS = ("null_impression_id", "null_label", "bad_label", "bad_event_time", "duplicate_impression_id")
_EPOCH_MIN_S = 0
_EPOCH_MAX_S = int(datetime(2200, 1, 1, tzinfo=UTC).timestamp())
_TS = pa.timestamp("us", tz="UTC")
_LARGE_ROW_GROUP = 1 << 20


class IngestError(Exception):
    """Click logs cannot be read as asked; the message names the file (and column, if one is at fault)."""


class EmptyDayError(IngestError):
    """A requested day has no Parquet files, or files without rows."""


@dataclass
class IngestReport:
    """What an open found: counts per reason, files read and where the quarantined rows went."""

    days: list[date | Period]
    files: list[str]
    rows_read: int = 0
    rows_valid: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    quarantine_uri: str | None = None
    quarantine_files: list[str] = field(default_factory=list)

    @property
    def rows_quarantined(self) -> int:
        return sum(self.quarantined.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (cycle run records, ``reloop logs check --json``)."""
        return {
            "days": [d.isoformat() for d in self.days],
            "files": list(self.files),
            "rows_read": self.rows_read,
            "rows_valid": self.rows_valid,
            "rows_quarantined": self.rows_quarantined,
            "quarantined": dict(self.quarantined),
            "quarantine_uri": self.quarantine_uri,
            "quarantine_files": list(self.quarantine_files),
        }


@dataclass
class _File:
    day: str  # the partition folder, relative to the root (``dt=…`` or ``dt=…/hr=…``)
    path: str  # inside the filesystem
    uri: str  # for messages
    rows: int
    bad_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # sorted positions
    bad_reasons: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int8))  # index into REASONS


def _partitions(day: date | Period | str) -> tuple[str, ...]:
    """Relative partition folders of a day (``dt=…``), a period (its hours) or a folder name itself."""
    if isinstance(day, str):
        return (day,)
    if isinstance(day, Period):
        return day.partitions()
    return (f"dt={day.isoformat()}",)


def _label(part: str) -> str:
    """``dt=2024-05-01/hr=13`` -> ``2024-05-01T13`` (a period's name), ``dt=2024-05-01`` -> ``2024-05-01``."""
    return part.replace("dt=", "").replace("/hr=", "T").replace("/mi=", ":")


def day_dir(logs_uri: str, day: date | Period | str) -> str:
    """``<logs_uri>/dt=YYYY-MM-DD`` (``…/hr=HH`` for an hourly period's first partition)."""
    return join(logs_uri, _partitions(day)[0])


def quarantine_dir(logs_uri: str, day: date | Period | str) -> str:
    """``<logs_uri>/_quarantine/dt=YYYY-MM-DD`` (``…/hr=HH`` for an hourly partition)."""
    return join(logs_uri, "_quarantine", _partitions(day)[0])


def output_schema(spec: FeatureSpec) -> pa.Schema:
    """The fixed schema of every batch ``DayLog.iter_batches`` yields."""
    fields = [
        pa.field(spec.impression_id, pa.string(), nullable=False),
        pa.field(spec.label, pa.int8(), nullable=False),
        pa.field(spec.event_time, _TS, nullable=False),
    ]
    fields += [pa.field(f.name, pa.string()) for f in spec.categorical]
    fields += [pa.field(f.name, pa.float64()) for f in spec.numeric]
    fields += [pa.field(f.name, pa.list_(pa.string())) for f in spec.multi]
    return pa.schema(fields)


# --- schema checks -----------------------------------------------------------------------------------
def _value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _is_stringish(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _ok_label(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _ok_id(t: pa.DataType) -> bool:
    t = _value_type(t)
    return _is_stringish(t) or pa.types.is_integer(t)


def _ok_time(t: pa.DataType) -> bool:
    t = _value_type(t)
    return pa.types.is_timestamp(t) or _is_stringish(t) or pa.types.is_integer(t) or pa.types.is_floating(t)


def _ok_categorical(t: pa.DataType) -> bool:
    t = _value_type(t)
    return (
        _is_stringish(t)
        or pa.types.is_integer(t)
        or pa.types.is_boolean(t)
        or pa.types.is_floating(t)
        or pa.types.is_null(t)
    )


def _ok_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)


def _ok_multi(t: pa.DataType) -> bool:
    if pa.types.is_null(t):
        return True
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _ok_categorical(t.value_type)
    return False


def _expected_columns(spec: FeatureSpec) -> list[tuple[str, Callable[[pa.DataType], bool], str]]:
    cols: list[tuple[str, Callable[[pa.DataType], bool], str]] = [
        (spec.impression_id, _ok_id, "string or integer (impression id)"),
        (spec.label, _ok_label, "integer, boolean or float (label 0/1)"),
        (spec.event_time, _ok_time, "timestamp, ISO-8601 string or epoch seconds (event time)"),
    ]
    cols += [(f.name, _ok_categorical, "string or integer (categorical)") for f in spec.categorical]
    cols += [(f.name, _ok_numeric, "integer or float (numeric)") for f in spec.numeric]
    cols += [(f.name, _ok_multi, "list of strings or integers (multi-valued)") for f in spec.multi]
    return cols


def _check_schema(schema: pa.Schema, spec: FeatureSpec, uri: str) -> None:
    for name, ok, expected in _expected_columns(spec):
        idx = schema.get_field_index(name)
        if idx < 0:
            if name in schema.names:
                raise IngestError(f"{uri}: column {name!r} appears more than once")
            raise IngestError(f"{uri}: required column {name!r} is missing (the feature spec needs it)")
        t = schema.field(idx).type
        if not ok(t):
            raise IngestError(f"{uri}: column {name!r} has type {t}, expected {expected}")


# --- row checks --------------------------------------------------------------------------------------
def parse_event_time(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Event times as ``timestamp[us, UTC]``; null where the value is null or cannot be understood."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    t = arr.type
    if pa.types.is_timestamp(t):
        out = pc.cast(pc.cast(arr, pa.timestamp("us")), _TS) if t.tz is None else pc.cast(arr, _TS)
    elif pa.types.is_integer(t) or pa.types.is_floating(t):
        seconds = pc.cast(arr, pa.float64())
        ok = pc.and_(
            pc.is_finite(seconds),
            pc.and_(pc.greater_equal(seconds, _EPOCH_MIN_S), pc.less(seconds, _EPOCH_MAX_S)),
        )
        micros = pc.cast(pc.round(pc.multiply(pc.if_else(ok, seconds, 0.0), 1e6)), pa.int64())
        out = pc.if_else(ok, micros, pa.scalar(None, pa.int64())).cast(pa.timestamp("us")).cast(_TS)
        return out
    elif _is_stringish(t):
        arr = pc.cast(arr, pa.string())
        out = None
        for target, then in ((_TS, None), (pa.timestamp("us"), _TS)):
            try:
                parsed = pc.cast(arr, target)
                out = parsed if then is None else pc.cast(parsed, then)
                break
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
        if out is None:
            out = pa.array([_parse_iso(s) for s in arr.to_pylist()], type=_TS)
    else:
        raise IngestError(f"event time of type {t} is not supported")
    ok = pc.and_(
        pc.greater_equal(out, pa.scalar(datetime(1970, 1, 1, tzinfo=UTC), _TS)),
        pc.less(out, pa.scalar(datetime(2200, 1, 1, tzinfo=UTC), _TS)),
    )
    return pc.if_else(ok, out, pa.scalar(None, _TS))


def _parse_iso(value: str | None) -> datetime | None:
    """Row-wise fallback for batches whose strings mix formats (or hold garbage)."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _row_reasons(spec: FeatureSpec, batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
    """Reason code per row (-1 = fine so far) and the stable hash of each impression id."""
    n = batch.num_rows
    reasons = np.full(n, -1, dtype=np.int8)
    ids = canonical_strings(batch.column(spec.impression_id), spec.impression_id)
    labels = pc.cast(batch.column(spec.label), pa.float64()).to_numpy(zero_copy_only=False)
    times = parse_event_time(batch.column(spec.event_time))
    checks = (
        ids.is_null().to_numpy(zero_copy_only=False),
        np.isnan(labels),
        ~np.isin(labels, (0.0, 1.0)),
        times.is_null().to_numpy(zero_copy_only=False),
    )
    for code in range(len(checks) - 1, -1, -1):  # earliest reason wins: assign it last
        reasons[checks[code]] = code
    return reasons, stable_hash(ids)


# --- opening -----------------------------------------------------------------------------------------
def _arrow_fs(fs: AbstractFileSystem) -> pafs.FileSystem:
    if is_local(fs):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def _uri(fs: AbstractFileSystem, path: str) -> str:
    return path if is_local(fs) else fs.unstrip_protocol(path)


def _list_day(fs: AbstractFileSystem, root: str, part: str) -> list[str]:
    folder = join(root, part)
    try:
        if not fs.isdir(folder):
            return []
        entries = fs.ls(folder, detail=False)
    except FileNotFoundError:
        return []
    names = []
    for entry in entries:
        base = posixpath.basename(str(entry).rstrip("/"))
        if base.endswith(".parquet") and not base.startswith((".", "_")):
            names.append(str(entry))
    return sorted(names)


class DayLog:
    """Validated days of click logs; ``iter_batches()`` streams the valid rows, as often as asked."""

    def __init__(
        self,
        *,
        fs: AbstractFileSystem,
        root: str,
        days: list[date | Period],
        spec: FeatureSpec,
        files: list[_File],
        batch_size: int,
        report: IngestReport,
    ) -> None:
        self._fs = fs
        self._afs = _arrow_fs(fs)
        self._root = root
        self.days = days
        self.spec = spec
        self.files = files
        self.batch_size = batch_size
        self.report = report
        self.schema = output_schema(spec)

    @property
    def num_rows(self) -> int:
        """Valid rows that ``iter_batches`` yields."""
        return self.report.rows_valid

    def _scan(self, f: _File, columns: list[str]) -> Iterator[pa.RecordBatch]:
        try:
            dataset = ds.dataset(f.path, format="parquet", filesystem=self._afs)
            # Arrow decodes a row group at a time. Without threads and with one batch of read-ahead,
            # memory stays a row group or two; threaded scans read ahead a large part of the file.
            # Pre-buffering (coalesced range reads) only pays on object stores.
            yield from dataset.to_batches(
                columns=columns,
                batch_size=self.batch_size,
                batch_readahead=1,
                fragment_readahead=1,
                use_threads=False,
                fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=not is_local(self._fs)),
            )
        except (pa.ArrowException, OSError) as exc:
            raise IngestError(f"{f.uri}: cannot read Parquet data: {exc}") from exc

    def _normalize(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        spec = self.spec
        arrays: list[pa.Array] = [
            canonical_strings(batch.column(spec.impression_id), spec.impression_id),
            pc.cast(batch.column(spec.label), pa.int8()),
            parse_event_time(batch.column(spec.event_time)),
        ]
        for f in spec.categorical:
            arrays.append(canonical_strings(batch.column(f.name), f.name))
        for nf in spec.numeric:
            arrays.append(pc.cast(batch.column(nf.name), pa.float64()))
        for m in spec.multi:
            col = batch.column(m.name)
            if pa.types.is_null(col.type):
                arrays.append(pa.nulls(len(col), pa.list_(pa.string())))
                continue
            values = canonical_strings(pc.list_flatten(col), m.name)
            if pa.types.is_fixed_size_list(col.type):
                col = pc.cast(col, pa.list_(col.type.value_type))
            offsets = pc.subtract(col.offsets, col.offsets[0]).cast(pa.int32())
            mask = col.is_null() if col.null_count else None
            if col.null_count:
                # list_flatten drops the ranges of null lists; rebuild offsets over the kept values.
                lengths = pc.if_else(col.is_valid(), pc.list_value_length(col), 0)
                ends = np.cumsum(lengths.to_numpy(zero_copy_only=False), dtype=np.int64)
                offsets = pa.array(np.concatenate([[0], ends]).astype(np.int32))
            arrays.append(pa.ListArray.from_arrays(offsets, values, mask=mask))
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def iter_batches(self) -> Iterator[pa.RecordBatch]:
        """Stream the valid rows in file order, in batches of ``batch_size`` rows (the last may be short)."""
        columns = list(self.schema.names)
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        for f in self.files:
            offset = 0
            for raw in self._scan(f, columns):
                n = raw.num_rows
                batch = raw
                if f.bad_rows.size:
                    lo, hi = np.searchsorted(f.bad_rows, [offset, offset + n])
                    if hi > lo:
                        keep = np.ones(n, dtype=bool)
                        keep[f.bad_rows[lo:hi] - offset] = False
                        batch = raw.filter(pa.array(keep))
                offset += n
                if batch.num_rows == 0:
                    continue
                try:
                    batch = self._normalize(batch)
                except (FeatureError, pa.ArrowInvalid) as exc:
                    raise IngestError(f"{f.uri}: {exc}") from exc
                pending.append(batch)
                pending_rows += batch.num_rows
                while pending_rows >= self.batch_size:
                    table = pa.Table.from_batches(pending, schema=self.schema)
                    head = table.slice(0, self.batch_size).combine_chunks().to_batches()
                    yield head[0] if head else pa.RecordBatch.from_pylist([], schema=self.schema)
                    rest = table.slice(self.batch_size)
                    pending = rest.combine_chunks().to_batches() if rest.num_rows else []
                    pending_rows = rest.num_rows
        if pending_rows:
            table = pa.Table.from_batches(pending, schema=self.schema).combine_chunks()
            yield from table.to_batches()


def open_days(
    logs_uri: str,
    days: Sequence[date | Period],
    spec: FeatureSpec,
    *,
    storage_options: dict[str, Any] | None = None,
    batch_size: int = 65536,
    quarantine: bool = True,
    allow_empty_parts: bool = False,
) -> DayLog:
    """Validate ``days`` of click logs under ``logs_uri`` and return a re-iterable stream of valid rows.

    Raises ``IngestError`` (file and column named) for unreadable files or bad schemas and
    ``EmptyDayError`` for a day without rows. Row-level problems are counted in ``report`` and written
    to the quarantine (replacing what an earlier open of the same day wrote) unless ``quarantine`` is
    False (a dry run that still counts). A ``Period`` reads each of its partitions (an hourly period
    ``dt=…/hr=HH``); with ``allow_empty_parts`` (a merged catch-up period) partitions without files
    are passed over as long as one has rows.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    days = sorted(set(days), key=lambda d: d.start if isinstance(d, Period) else Period.of_day(d).start)
    if not days:
        raise ValueError("open_days needs at least one day")
    fs, root = filesystem(logs_uri, storage_options)
    files: list[_File] = []
    parts = [part for day in days for part in _partitions(day)]
    names = ",".join(d.isoformat() for d in days)
    for part in parts:
        paths = _list_day(fs, root, part)
        if not paths:
            if allow_empty_parts:
                continue
            raise EmptyDayError(
                f"no click logs for {_label(part)}: no Parquet files under {_uri(fs, join(root, part))}"
            )
        day = part
        day_rows = 0
        for path in paths:
            uri = _uri(fs, path)
            try:
                with fs.open(path, "rb") as fh:
                    pf = pq.ParquetFile(fh)
                    schema = pf.schema_arrow
                    rows = pf.metadata.num_rows
                    largest = max(
                        (pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)),
                        default=0,
                    )
            except Exception as exc:  # corrupt footer, permission, truncated file: all name the file
                raise IngestError(f"{uri}: cannot read Parquet file: {exc}") from exc
            _check_schema(schema, spec, uri)
            if largest > _LARGE_ROW_GROUP:
                log.warning("%s: row groups of %d rows; reading holds one in memory", uri, largest)
            files.append(_File(day=day, path=path, uri=uri, rows=rows))
            day_rows += rows
        if day_rows == 0 and not allow_empty_parts:
            raise EmptyDayError(f"no click logs for {_label(day)}: {len(paths)} Parquet file(s) but no rows")
    if not files or sum(f.rows for f in files) == 0:
        raise EmptyDayError(f"no click logs for {names}: no Parquet files with rows under {_uri(fs, root)}")

    report = IngestReport(days=list(days), files=[f.uri for f in files])
    log_ = DayLog(
        fs=fs, root=root, days=list(days), spec=spec, files=files, batch_size=batch_size, report=report
    )
    check_cols = [spec.impression_id, spec.label, spec.event_time]
    for day in parts:
        day_files = [f for f in files if f.day == day]
        # Duplicate ids are found once per day after the pass: (hash, global row) of otherwise-valid rows.
        hashes: list[np.ndarray] = []
        positions: list[np.ndarray] = []
        base = 0
        bases: list[int] = []
        for f in day_files:
            bases.append(base)
            bad_pos: list[np.ndarray] = []
            bad_code: list[np.ndarray] = []
            offset = 0
            for batch in log_._scan(f, check_cols):
                try:
                    reasons, h = _row_reasons(spec, batch)
                except (FeatureError, pa.ArrowInvalid) as exc:
                    raise IngestError(f"{f.uri}: {exc}") from exc
                fine = reasons < 0
                idx = np.flatnonzero(~fine)
                bad_pos.append(idx + offset)
                bad_code.append(reasons[idx])
                ok = np.flatnonzero(fine)
                hashes.append(h[ok])
                positions.append(ok + offset + base)
                offset += batch.num_rows
                report.rows_read += batch.num_rows
            if offset != f.rows:
                raise IngestError(f"{f.uri}: footer says {f.rows} rows but {offset} were read")
            f.bad_rows = np.concatenate(bad_pos) if bad_pos else np.zeros(0, np.int64)
            f.bad_reasons = np.concatenate(bad_code) if bad_code else np.zeros(0, np.int8)
            base += offset
        _mark_duplicates(day_files, bases, hashes, positions)
    for f in files:
        for code, count in zip(*np.unique(f.bad_reasons, return_counts=True), strict=True):
            reason = REASONS[int(code)]
            report.quarantined[reason] = report.quarantined.get(reason, 0) + int(count)
    report.rows_valid = report.rows_read - report.rows_quarantined
    report.quarantine_uri = (
        _uri(fs, quarantine_dir(root, parts[0])) if len(parts) == 1 else _uri(fs, join(root, "_quarantine"))
    )
    if quarantine:
        for day in parts:
            report.quarantine_files += _write_quarantine(log_, [f for f in files if f.day == day], day)
    if report.rows_quarantined:
        log.warning(
            "click logs %s: %d of %d rows quarantined (%s) under %s",
            names,
            report.rows_quarantined,
            report.rows_read,
            ", ".join(f"{k}={v}" for k, v in sorted(report.quarantined.items())),
            report.quarantine_uri,
        )
    return log_


def _mark_duplicates(
    files: list[_File], bases: list[int], hashes: list[np.ndarray], positions: list[np.ndarray]
) -> None:
    """Quarantine every otherwise-valid row whose impression id was already seen earlier in the day."""
    if not hashes:
        return
    h = np.concatenate(hashes)
    pos = np.concatenate(positions)
    if h.size < 2:
        return
    order = np.argsort(h, kind="stable")  # positions ascend within equal hashes: the first one stays
    hs = h[order]
    repeat = np.zeros(h.size, dtype=bool)
    repeat[1:] = hs[1:] == hs[:-1]
    dup = np.sort(pos[order[repeat]])
    if dup.size == 0:
        return
    code = np.int8(REASONS.index("duplicate_impression_id"))
    edges = [*bases, bases[-1] + files[-1].rows] if files else []
    for i, f in enumerate(files):
        lo, hi = np.searchsorted(dup, [edges[i], edges[i + 1]])
        if hi <= lo:
            continue
        local = dup[lo:hi] - edges[i]
        merged = np.concatenate([f.bad_rows, local])
        codes = np.concatenate([f.bad_reasons, np.full(local.size, code, dtype=np.int8)])
        order_f = np.argsort(merged, kind="stable")
        f.bad_rows = merged[order_f]
        f.bad_reasons = codes[order_f]


def _write_quarantine(log_: DayLog, files: list[_File], day: str) -> list[str]:
    """Write the day's bad rows (all original columns + reason, source file and row); return their URIs."""
    fs = log_._fs
    folder = quarantine_dir(log_._root, day)
    try:
        stale = [p for p in fs.ls(folder, detail=False) if posixpath.basename(str(p)).startswith("part-")]
    except FileNotFoundError:
        stale = []
    for p in stale:
        fs.rm(str(p))
    written: list[str] = []
    for index, f in enumerate(files):
        if f.bad_rows.size == 0:
            continue
        target = join(folder, f"part-{index:05d}.parquet")
        written.append(_uri(fs, target))
        local = is_local(fs)
        tmp = join(folder, f".tmp-{uuid.uuid4().hex}.parquet") if local else target
        if local:
            fs.makedirs(folder, exist_ok=True)
        writer: pq.ParquetWriter | None = None
        try:
            with fs.open(tmp, "wb") as fh:
                offset = 0
                for raw in log_._scan(f, None):  # type: ignore[arg-type]
                    n = raw.num_rows
                    lo, hi = np.searchsorted(f.bad_rows, [offset, offset + n])
                    if hi > lo:
                        rows = f.bad_rows[lo:hi]
                        part = raw.take(pa.array(rows - offset))
                        reason_col = "reason" if "reason" not in part.schema.names else "_quarantine_reason"
                        part = pa.Table.from_batches([part])
                        part = part.append_column(
                            reason_col, pa.array([REASONS[c] for c in f.bad_reasons[lo:hi]], pa.string())
                        )
                        part = part.append_column("source_file", pa.array([f.uri] * len(rows), pa.string()))
                        part = part.append_column("source_row", pa.array(rows, pa.int64()))
                        if writer is None:
                            writer = pq.ParquetWriter(fh, part.schema)
                        writer.write_table(part)
                    offset += n
                if writer is not None:
                    writer.close()
                    writer = None
            if local:
                fs.mv(tmp, target)
        finally:
            if writer is not None:
                writer.close()
            if local and fs.exists(tmp):
                fs.rm(tmp)
    return written
