"""The prediction archive: every prediction served, durably, for the next training cycle.

Serving appends column chunks with no I/O and no per-row Python work on the request path: the
features arrive as the arrays the transform already computed (``FeatureColumns``: the SipHash
of every categorical value, the numbers as sent) and are copied, with the scores and the ids'
text, into preallocated slabs that are reused once written (``_Slab``), so a batch costs the
buffer a few slices, not a dict per row that the cyclic GC would rescan nor memory of its own;
mappings (``archive_features=json``) are JSON-encoded at append and packed into one blob a
batch. A background flusher thread
concatenates them into Arrow columns and writes Parquet parts at
``<root>/dt=YYYY-MM-DD/version=V/part-<replica>-<uuid>.parquet``
every ``flush_rows`` rows or ``flush_seconds`` seconds, and on ``close()``. Parts are written
atomically (temporary dot-name then rename locally, a single PUT on object stores), so a reader
never sees a partial part, and a crash loses at most what was still buffered.

Buffer policy (bounded memory): ``append`` never raises. When the buffer holds ``buffer_rows``
rows or ``buffer_bytes`` bytes (encoded features, ids and scores), it blocks up to ``block_ms``
for the flusher to make room, then drops the chunk and counts it in ``overflow_rows`` and
``dropped_rows``. A failed write is logged and counted in ``write_errors``; its rows stay
buffered and are retried on the next flush, up to ``max_attempts`` tries, after which they are
dropped and counted (a broken store must not grow memory without bound).
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reloop_service.data.spec import FeatureSpec
from reloop_service.storage import filesystem, join, write_atomic

log = logging.getLogger(__name__)

ARCHIVE_SCHEMA = pa.schema(
    [
        pa.field("impression_id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("model_version", pa.int64(), nullable=False),
        pa.field("ctr", pa.float64(), nullable=False),
        pa.field("features", pa.string(), nullable=False),
    ]
)
"""The parts' columns. ``features`` is the JSON of each row's feature mapping in parts written from
mappings (every part before columnar archiving, and ``PredictionRows`` built from mappings); parts
written from ``FeatureColumns`` (what serving appends) hold a struct of the spec's fields instead
(``features_schema``). ``archived_features`` reads either."""
READ_COLUMNS: tuple[str, ...] = ("impression_id", "ctr", "model_version", "ts")
_PART_PREFIX = "part-"
_PART_SUFFIX = ".parquet"


@dataclass(frozen=True)
class FeatureColumns:
    """One served batch's features as the model read them: hashed categorical values, raw numbers.

    ``hashes`` / ``valid`` [K]: the 64-bit SipHash of every categorical value's canonical string
    (``transforms.stable_hash``; before the fold into a field's buckets, so they fit any bucket
    count) and whether it was present: the categorical fields one after the other (``n`` each),
    then every element of each multi-valued field (``multi_lengths[j]``: int64 [n] elements per
    row). ``num[j]``: float64 [n] of numeric field j as sent (NaN: missing). Only the spec's
    fields; missing, null and ``[]`` are one value to the model and are archived alike.

    Building it costs nothing (these are the transform's own arrays: no per-row Python work) and
    the buffer holds a few NumPy arrays per batch; the values themselves are not kept (set
    ``RELOOP_ARCHIVE_FEATURES=json`` for that: ``PredictionRows`` of mappings).
    """

    spec: FeatureSpec
    n: int
    hashes: np.ndarray
    valid: np.ndarray
    num: Sequence[np.ndarray]
    multi_lengths: Sequence[np.ndarray]

    def nbytes(self) -> int:
        """What these arrays hold in memory."""
        arrays = (self.hashes, self.valid, *self.num, *self.multi_lengths)
        return sum(x.nbytes for x in arrays)

    def check(self, n: int) -> None:
        """Refuse columns that do not fit their spec and row count (O(fields): on the request path;
        element counts that disagree with ``multi_lengths`` fail the part's write, counted)."""
        spec = self.spec
        if (
            self.n != n
            or len(self.num) != len(spec.numeric)
            or len(self.multi_lengths) != len(spec.multi)
            or any(len(x) != n for x in self.num)
            or any(len(x) != n for x in self.multi_lengths)
            or len(self.hashes) != len(self.valid)
            or len(self.hashes) < n * len(spec.categorical)
        ):
            raise ValueError("feature columns do not match their spec and row count")


def features_schema(spec: FeatureSpec) -> pa.StructType:
    """The ``features`` struct of parts written from ``FeatureColumns``: the spec's fields in order.

    Categorical ``uint64`` (the SipHash of the canonical string; null: missing), numeric
    ``float64`` as sent, multi-valued ``list<uint64>``. A field's bucket is ``hash % (buckets - 1)
    + 1`` (``transforms.bucketize``), for the spec's bucket counts or any other.
    """
    return pa.struct(
        [pa.field(f.name, pa.uint64()) for f in spec.categorical]
        + [pa.field(f.name, pa.float64()) for f in spec.numeric]
        + [pa.field(f.name, pa.list_(pa.uint64())) for f in spec.multi]
    )


@dataclass(frozen=True)
class PredictionRows:
    """One served batch, as columns: what ``append`` takes (building it costs no per-row I/O).

    ``features`` holds the batch's ``FeatureColumns`` (serving), or per row the feature mapping as
    served or already JSON-encoded (``bytes``); ``append`` encodes mappings at once (~1 µs a row)
    so the buffer holds flat bytes rather than tens of thousands of dicts and lists that the cyclic
    GC would keep re-scanning.
    ``ts_us`` is one timestamp (microseconds since the epoch, UTC) for the whole batch: a batch is
    served at one instant.
    ``id_text``: optionally, every id's ASCII one after the other, ``UUID_WIDTH`` bytes each (the
    server's own UUIDv7s come as one such string): the buffer keeps it instead of the strings, so
    the flusher hands Arrow one buffer instead of converting thousands of ``str`` objects.
    """

    impression_ids: Sequence[str]
    ctr: np.ndarray
    model_version: int
    ts_us: int
    features: Sequence[Mapping[str, Any]] | Sequence[bytes] | FeatureColumns
    id_text: bytes | None = None

    def __len__(self) -> int:
        return len(self.impression_ids)

    @property
    def day(self) -> date:
        return _day_of(self.ts_us)

    def encoded(self) -> PredictionRows:
        """The same rows with every feature mapping JSON-encoded to ``bytes`` (idempotent)."""
        feats = self.features
        if isinstance(feats, FeatureColumns):
            return self
        if feats and not isinstance(feats[0], bytes):
            try:  # the common case, mappings only: one C-level map (a mixed list falls through)
                return replace(self, features=list(map(orjson.dumps, feats)))
            except TypeError:  # orjson.JSONEncodeError too: a bytes element, or an int beyond 64 bits
                pass
        if all(isinstance(f, bytes) for f in feats):
            return self
        try:
            dumps = orjson.dumps
            out = [f if isinstance(f, bytes) else dumps(f) for f in feats]
        except (TypeError, orjson.JSONEncodeError):  # e.g. an int beyond 64 bits: slow path, lossless
            out = [f if isinstance(f, bytes) else _dumps_slow(f) for f in feats]
        return replace(self, features=out)


def _dumps_slow(features: Mapping[str, Any]) -> bytes:
    """What orjson refuses (ints beyond 64 bits, odd key types), through the stdlib encoder."""
    return json.dumps(features, default=str, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass
class ArchiveCounters:
    """What ``/metrics`` exports; plain ints, read without a lock (a torn read is harmless)."""

    appended_rows: int = 0
    written_rows: int = 0
    written_parts: int = 0
    dropped_rows: int = 0
    overflow_rows: int = 0  # dropped because the buffer was full (rows or bytes)
    write_errors: int = 0
    blocked_appends: int = 0


@dataclass(slots=True)
class _Pending:
    """One appended batch, with no per-row Python objects: its ids as one UTF-8 buffer, its features
    as the ``FeatureColumns`` given or mappings packed into one UTF-8 JSON blob + Arrow offsets.

    The caller's id strings and rows are not kept: what the buffer holds between flushes is a few
    arrays and buffers a batch (the cyclic GC has next to nothing to scan, the flusher nothing to
    convert row by row)."""

    n: int
    ts_us: int
    model_version: int
    ctr: np.ndarray
    ids: bytes | np.ndarray  # every id's UTF-8, one after the other (bytes, or uint8 in a slab)
    id_lengths: np.ndarray | None  # int64 [n] bytes of each id; None: every id is UUID_WIDTH bytes
    nbytes: int  # what this batch holds in memory (see ``_pack``)
    columns: FeatureColumns | None = None
    blob: bytes = b""
    offsets: np.ndarray | None = None
    attempts: int = 0
    slab: _Slab | None = None  # where its arrays were copied to (``_Slab``), if anywhere


UUID_WIDTH = 36
"""Bytes of one UUID in its 8-4-4-4-12 text form (``PredictionRows.id_text``)."""


def _id_bytes(rows: PredictionRows) -> tuple[bytes, np.ndarray | None]:
    """The batch's ids as one UTF-8 buffer, and each id's length in bytes (None: all ``UUID_WIDTH``)."""
    n = len(rows)
    text = rows.id_text
    if text is not None and len(text) == UUID_WIDTH * n:
        return text, None
    ids = rows.impression_ids
    if n == 1:
        one = ids[0].encode()
        return one, np.array([len(one)], np.int64)
    data = "".join(ids).encode()
    lengths = np.fromiter(map(len, ids), np.int64, n)
    if int(lengths.sum()) != len(data):  # some id is not ASCII: count its UTF-8 bytes
        lengths = np.fromiter((len(i.encode()) for i in ids), np.int64, n)
    return data, lengths


def _pack(rows: PredictionRows) -> _Pending:
    """Hold ``rows``' columns as they are, or encode its mappings into one bytes object + offsets."""
    n = len(rows)
    ids, id_lengths = _id_bytes(rows)
    ctr = np.asarray(rows.ctr, dtype=np.float64).reshape(n)
    # ids (+ lengths) and scores; each part below adds what it holds
    held = len(ids) + (0 if id_lengths is None else id_lengths.nbytes) + ctr.nbytes
    if isinstance(rows.features, FeatureColumns):
        cols = rows.features
        cols.check(n)
        return _Pending(n, rows.ts_us, rows.model_version, ctr, ids, id_lengths, held + cols.nbytes(), cols)
    feats: list[bytes] = list(rows.encoded().features)  # type: ignore[arg-type]
    if len(feats) != n:
        raise ValueError(f"{len(feats)} feature rows for {n} predictions")
    offsets = np.zeros(len(feats) + 1, np.int32)
    np.cumsum(np.fromiter(map(len, feats), np.int64, len(feats)), out=offsets[1:])
    blob = b"".join(feats)
    nbytes = held + len(blob) + offsets.nbytes
    return _Pending(n, rows.ts_us, rows.model_version, ctr, ids, id_lengths, nbytes, None, blob, offsets)


class _Slab:
    """Preallocated memory that appended batches' arrays are copied into, reused once written.

    Holding each request's own arrays (~17 KB a batch of 100) until the next flush was most of what
    the archive cost the request path, far more than copying them into memory that outlives the
    requests (servers side by side, docs/benchmarks.md, issue 13, fifth round, serving): memory freshly
    allocated every request and held for seconds is memory the allocator cannot hand to the next
    request. A slab holds about 20,000 served rows of the demo spec in ~4 MB; the archive keeps at
    most ``_SPARE_SLABS`` idle.
    """

    __slots__ = ("floats", "hashes", "ints", "live", "text", "used", "valid")

    def __init__(self) -> None:
        self.hashes = np.empty(_SLAB_HASHES, np.uint64)
        self.valid = np.empty(_SLAB_HASHES, np.bool_)
        self.floats = np.empty(_SLAB_FLOATS, np.float64)  # numeric fields and scores
        self.ints = np.empty(_SLAB_INTS, np.int64)  # multi-valued lengths
        self.text = np.empty(_SLAB_TEXT, np.uint8)  # ids
        self.used = [0, 0, 0, 0]  # elements taken of hashes (and valid), floats, ints, text
        self.live = 0  # buffered batches whose arrays are here

    def take(self, pending: _Pending) -> bool:
        """Copy ``pending``'s arrays here and point it at the copies; False when they do not fit."""
        cols = pending.columns
        if cols is None:
            return False
        n = pending.n
        need = (len(cols.hashes), n * (len(cols.num) + 1), n * len(cols.multi_lengths), len(pending.ids))
        h, f, i, t = self.used
        if (
            h + need[0] > _SLAB_HASHES
            or f + need[1] > _SLAB_FLOATS
            or i + need[2] > _SLAB_INTS
            or t + need[3] > _SLAB_TEXT
        ):
            return False
        hashes = self.hashes[h : h + need[0]]
        hashes[:] = cols.hashes
        valid = self.valid[h : h + need[0]]
        valid[:] = cols.valid
        num = []
        for x in (*cols.num, pending.ctr):
            view = self.floats[f : f + n]
            view[:] = x
            num.append(view)
            f += n
        lengths = []
        for x in cols.multi_lengths:
            counts = self.ints[i : i + n]
            counts[:] = x
            lengths.append(counts)
            i += n
        text = self.text[t : t + need[3]]
        text[:] = np.frombuffer(pending.ids, np.uint8)
        self.used = [h + need[0], f, i, t + need[3]]
        pending.columns = FeatureColumns(cols.spec, n, hashes, valid, num[:-1], lengths)
        pending.ctr = num[-1]
        pending.ids = text
        pending.slab = self
        self.live += 1
        return True


_SLAB_HASHES = 1 << 18
_SLAB_FLOATS = 1 << 16
_SLAB_INTS = 1 << 15
_SLAB_TEXT = 1 << 20
_SPARE_SLABS = 2


@dataclass
class _Buffer:
    chunks: deque[_Pending] = field(default_factory=deque)
    rows: int = 0  # buffered + being written: the memory bound covers both
    nbytes: int = 0  # the same, in bytes (``_Pending.nbytes``)


def now_us() -> int:
    """Current UTC time in microseconds since the epoch."""
    return time.time_ns() // 1000


class PredictionArchive:
    """Buffered, bounded, crash-safe writer of served predictions (see the module docstring)."""

    def __init__(
        self,
        root_uri: str,
        *,
        storage_options: dict[str, Any] | None = None,
        replica_id: str | None = None,
        flush_rows: int = 50_000,
        flush_seconds: float = 5.0,
        buffer_rows: int = 500_000,
        buffer_bytes: int = 256 * 1024 * 1024,
        block_ms: float = 50.0,
        max_attempts: int = 3,
        start: bool = True,
    ) -> None:
        if flush_rows < 1 or buffer_rows < 1 or buffer_bytes < 1 or flush_seconds <= 0:
            raise ValueError("flush_rows, buffer_rows and buffer_bytes must be >= 1 and flush_seconds > 0")
        self.root_uri = root_uri
        self._fs, self._root = filesystem(root_uri, storage_options)
        self.replica_id = _safe_replica(replica_id or uuid.uuid4().hex[:8])
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.buffer_rows = buffer_rows
        self.buffer_bytes = buffer_bytes
        self.block_s = block_ms / 1000.0
        self.max_attempts = max_attempts
        self.counters = ArchiveCounters()
        self._buf = _Buffer()
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()  # one writer at a time (flusher or explicit flush)
        self._closed = False
        self._flush_requested = False
        self._thread: threading.Thread | None = None
        self._slab: _Slab | None = None  # where appends copy to now
        self._spare: list[_Slab] = []  # written slabs kept for reuse (at most ``_SPARE_SLABS``)
        if start:
            self.start()

    # --- request path --------------------------------------------------------------------------
    def append(self, rows: PredictionRows) -> bool:
        """Queue one served batch; True when accepted, False when dropped (counted). Never raises."""
        n = len(rows)
        if n == 0:
            return True
        try:
            pending = _pack(rows)
        except Exception as exc:  # unencodable features must not fail the prediction
            self.counters.dropped_rows += n
            log.error("archive could not encode %d prediction rows: dropped (%s)", n, exc)
            return False
        with self._cond:
            if self._closed:
                self.counters.dropped_rows += n
                log.error("archive closed: dropped %d prediction rows", n)
                return False
            if self._full(n, pending.nbytes):
                self.counters.blocked_appends += 1
                self._flush_requested = True
                self._cond.notify_all()
                deadline = time.monotonic() + self.block_s
                while self._full(n, pending.nbytes) and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._cond.wait(left):
                        break
                if self._full(n, pending.nbytes) or self._closed:
                    self.counters.dropped_rows += n
                    self.counters.overflow_rows += n
                    log.warning(
                        "archive buffer full (%d rows, %d bytes): dropped %d prediction rows",
                        self._buf.rows,
                        self._buf.nbytes,
                        n,
                    )
                    return False
            self._hold(pending)
            self._buf.chunks.append(pending)
            self._buf.rows += n
            self._buf.nbytes += pending.nbytes
            self.counters.appended_rows += n
            if self._buf.rows >= self.flush_rows:
                self._flush_requested = True
                self._cond.notify_all()
        return True

    def _hold(self, pending: _Pending) -> None:
        """Copy an accepted batch's arrays into the current slab (a fresh or spare one when it is
        full); a batch too large for any slab, or of mappings, keeps its own. Under ``_cond``."""
        if pending.columns is None:
            return
        slab = self._slab
        if slab is not None and slab.take(pending):
            return
        fresh = self._spare.pop() if self._spare else _Slab()
        if not fresh.take(pending):  # larger than a slab: keep the fresh one for the next batch
            if slab is None:
                self._slab = fresh
            else:
                self._spare.append(fresh)
            return
        self._slab = fresh
        if slab is not None:
            self._retire(slab)

    def _retire(self, slab: _Slab) -> None:
        """Reuse ``slab`` once no buffered batch is in it: from its start when appends still copy
        into it (the memory stays warm), else as a spare. Under ``_cond``."""
        if slab.live != 0:
            return
        if slab is self._slab:
            slab.used = [0, 0, 0, 0]
        elif len(self._spare) < _SPARE_SLABS:
            slab.used = [0, 0, 0, 0]
            self._spare.append(slab)

    def _full(self, rows: int, nbytes: int) -> bool:
        """Whether adding a batch would pass either bound."""
        return self._buf.rows + rows > self.buffer_rows or self._buf.nbytes + nbytes > self.buffer_bytes

    @property
    def queue_depth(self) -> int:
        """Rows held in memory (buffered or being written)."""
        return self._buf.rows

    @property
    def buffered_bytes(self) -> int:
        """Bytes held in memory (buffered or being written), as counted by ``_pack``."""
        return self._buf.nbytes

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the background flusher (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="archive-flusher", daemon=True)
            self._thread.start()

    def flush(self) -> int:
        """Write everything buffered now; returns the rows written. Errors are counted, not raised."""
        with self._write_lock:
            with self._cond:
                taken = list(self._buf.chunks)
                self._buf.chunks.clear()
                self._flush_requested = False
            if not taken:
                return 0
            return self._write(taken)

    def close(self) -> None:
        """Stop the flusher and write what is left; later appends are dropped and counted."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        self.flush()

    def __enter__(self) -> PredictionArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- flusher -------------------------------------------------------------------------------
    def _run(self) -> None:
        _name_os_thread(FLUSHER_THREAD)
        try:  # off the request path, before the first flush
            warm_up_writer()
        except Exception:  # only a warm-up: the real write reports its own errors
            log.exception("archive writer warm-up failed")
        while True:
            with self._cond:
                if not self._closed and not self._flush_requested:
                    self._cond.wait(self.flush_seconds)
                if self._closed:
                    return
            try:
                self.flush()
            except Exception:  # the flusher must survive anything
                log.exception("archive flusher failed")

    def _write(self, taken: list[_Pending]) -> int:
        # One part per day, version and features layout (JSON, or the struct of one spec's fields).
        # Keyed by the day's number and the spec's identity (hashing an Arrow struct type or
        # building a date per batch cost more than the rest of a flush of single-item batches).
        groups: dict[tuple[int, int, int], list[_Pending]] = {}
        layouts: dict[int, pa.DataType] = {0: pa.string()}  # by spec identity: a batch's spec is its model's
        for pending in taken:
            cols = pending.columns
            key = 0 if cols is None else id(cols.spec)
            if key not in layouts:
                layouts[key] = features_schema(cols.spec)  # type: ignore[union-attr]
            groups.setdefault((pending.ts_us // _US_PER_DAY, pending.model_version, key), []).append(pending)
        written = 0
        retry: list[_Pending] = []
        done: list[_Pending] = []  # written or given up: their slab space can be reused
        released = released_bytes = 0
        for (_day, version, key), chunks in groups.items():
            day = _day_of(chunks[0].ts_us)
            layout = layouts[key]
            nrows = sum(c.n for c in chunks)
            path = part_path(self._root, day=day, version=version, replica_id=self.replica_id)
            try:
                write_atomic(self._fs, path, _to_parquet(chunks, layout))
            except Exception as exc:
                self.counters.write_errors += 1
                log.error("archive write of %d rows to %s failed: %s", nrows, path, exc)
                for c in chunks:
                    c.attempts += 1
                    if c.attempts >= self.max_attempts:
                        self.counters.dropped_rows += c.n
                        released += c.n
                        released_bytes += c.nbytes
                        done.append(c)
                        log.error("archive gave up on %d rows after %d tries", c.n, c.attempts)
                    else:
                        retry.append(c)
                continue
            written += nrows
            released += nrows
            released_bytes += sum(c.nbytes for c in chunks)
            done.extend(chunks)
            self.counters.written_rows += nrows
            self.counters.written_parts += 1
        with self._cond:
            for c in reversed(retry):
                self._buf.chunks.appendleft(c)
            self._buf.rows -= released
            self._buf.nbytes -= released_bytes
            for c in done:
                slab = c.slab
                if slab is not None:
                    c.slab = None
                    slab.live -= 1
                    self._retire(slab)
            self._cond.notify_all()
        return written


_US_PER_DAY = 86_400_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _day_of(ts_us: int) -> date:
    """The UTC day of a timestamp in microseconds since the epoch."""
    return (_EPOCH + timedelta(microseconds=ts_us)).date()


FLUSHER_THREAD = "archive-flush"
"""The flusher's OS-level thread name (``top -H``, /proc/<pid>/task/*/comm): ``reloop bench serve``
reads its CPU time from there."""


def _name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` at the OS level too (Linux ``prctl``; elsewhere, nothing)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # 15 = PR_SET_NAME
    except (OSError, AttributeError):
        pass


def _safe_replica(replica_id: str) -> str:
    """Replica ids go into file names: keep them to a safe alphabet."""
    cleaned = "".join(ch if ch.isalnum() or ch in "_." else "_" for ch in replica_id)
    return cleaned or "replica"


def part_path(root: str, *, day: date, version: int, replica_id: str) -> str:
    """``<root>/dt=YYYY-MM-DD/version=V/part-<replica>-<uuid>.parquet``."""
    name = f"{_PART_PREFIX}{replica_id}-{uuid.uuid4().hex}{_PART_SUFFIX}"
    return join(root, f"dt={day.isoformat()}", f"version={int(version)}", name)


# Rows per Arrow table and row group. A table is built by a fixed number of NumPy and Arrow calls
# (no per-row Python work: ids and features arrive as buffers and arrays), each holding the GIL
# well under a millisecond; Parquet encoding releases it. So a 50,000-row part is one table and one
# row group: fewer GIL hand-offs with the request thread than steps of 4,096 rows (the step size
# when rows were converted from Python objects), ~20% less flusher CPU and ~28% smaller parts (LZ4
# on larger pages). The bound keeps a large flush (a buffer refilled after failed writes) in steps.
_ROWS_PER_STEP = 65_536


def _part_schema(layout: pa.DataType) -> pa.Schema:
    return ARCHIVE_SCHEMA.set(ARCHIVE_SCHEMA.get_field_index("features"), pa.field("features", layout, False))


def _struct(cols: Sequence[FeatureColumns], layout: pa.StructType) -> pa.StructArray:
    """The ``features`` struct of many batches, with a fixed number of NumPy calls per field.

    Every batch's ``hashes`` / ``valid`` are concatenated once; each field's values are then picked
    out by one index array over all batches (a batch of ``k`` rows holds its categorical fields
    ``k`` values each, then its multi-valued fields' elements). No Python loop over the batches
    per field: a flush of thousands of single-item batches cost ~20 µs of flusher CPU a batch so.
    """
    spec = cols[0].spec
    n_cat = len(spec.categorical)
    sizes = np.fromiter((c.n for c in cols), np.int64, len(cols))
    widths = np.fromiter((len(c.hashes) for c in cols), np.int64, len(cols))
    base = np.zeros(len(cols), np.int64)  # where each batch starts in the concatenated hashes
    np.cumsum(widths[:-1], out=base[1:])
    all_hashes = np.concatenate([c.hashes for c in cols]) if cols else np.zeros(0, np.uint64)
    all_valid = np.concatenate([c.valid for c in cols]) if cols else np.zeros(0, bool)
    n = int(sizes.sum())
    row_batch = np.repeat(np.arange(len(cols)), sizes)  # the batch of every row
    row_start = np.zeros(len(cols), np.int64)
    np.cumsum(sizes[:-1], out=row_start[1:])
    row_pos = np.arange(n, dtype=np.int64) - row_start[row_batch]  # the row's index in its batch
    nulls = not all_valid.all()  # served batches seldom have any: no masks to build then

    def hashed(index: np.ndarray) -> pa.Array:
        return pa.array(all_hashes[index], pa.uint64(), mask=~all_valid[index] if nulls else None)

    arrays: list[pa.Array] = []
    first = base[row_batch] + row_pos  # each row's first categorical field
    stride = sizes[row_batch]  # and the distance to its next one
    for j in range(n_cat):
        arrays.append(hashed(first + j * stride))
    for j in range(len(spec.numeric)):
        x = np.concatenate([c.num[j] for c in cols])
        arrays.append(pa.array(x, pa.float64(), mask=np.isnan(x)))
    nxt = base + n_cat * sizes  # where each batch's next multi-valued field begins
    for j in range(len(spec.multi)):
        lengths = np.concatenate([c.multi_lengths[j] for c in cols]).astype(np.int64, copy=False)
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        per_batch = offsets[row_start + sizes] - offsets[row_start]  # elements of each batch
        elem_batch = np.repeat(np.arange(len(cols)), per_batch)
        elem_pos = np.arange(int(offsets[-1]), dtype=np.int64) - offsets[row_start][elem_batch]
        index = nxt[elem_batch] + elem_pos
        if index.size and int(index.max()) >= len(all_hashes):
            raise ValueError("feature columns: hashes and multi-valued lengths disagree")
        nxt = nxt + per_batch
        arrays.append(pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), hashed(index)))
    if not np.array_equal(nxt, base + widths):
        raise ValueError("feature columns: hashes and multi-valued lengths disagree")
    return pa.StructArray.from_arrays(arrays, fields=list(layout))


def _ids(pendings: Sequence[_Pending], n: int) -> pa.StringArray:
    """The ``impression_id`` column of ``pendings`` (``n`` rows): their id buffers as one Arrow array."""
    data = b"".join([p.ids if isinstance(p.ids, bytes) else p.ids.data for p in pendings])
    offsets = np.zeros(n + 1, np.int32)
    if all(p.id_lengths is None for p in pendings):
        offsets[1:] = UUID_WIDTH
    else:
        offsets[1:] = np.concatenate(
            [np.full(p.n, UUID_WIDTH, np.int64) if p.id_lengths is None else p.id_lengths for p in pendings]
        )
    np.cumsum(offsets, out=offsets)
    if int(offsets[-1]) != len(data):
        raise ValueError("archive ids: lengths and bytes disagree")
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


def _table(pendings: Sequence[_Pending], schema: pa.Schema) -> pa.Table:
    """One Arrow table of ``pendings`` (one write step: up to about ``_ROWS_PER_STEP`` rows)."""
    sizes = [p.n for p in pendings]
    n = sum(sizes)
    layout = schema.field("features").type
    if pa.types.is_struct(layout):
        feats: pa.Array = _struct([p.columns for p in pendings if p.columns is not None], layout)
    else:
        feats = pa.concat_arrays(
            [
                pa.StringArray.from_buffers(p.n, pa.py_buffer(p.offsets), pa.py_buffer(p.blob))
                for p in pendings
            ]
        )
    return pa.Table.from_arrays(
        [
            _ids(pendings, n),
            pa.array(np.repeat([p.ts_us for p in pendings], sizes), pa.int64()).cast(
                pa.timestamp("us", tz="UTC")
            ),
            pa.array(np.repeat(np.array([p.model_version for p in pendings], np.int64), sizes), pa.int64()),
            pa.array(np.concatenate([p.ctr for p in pendings])),
            feats,
        ],
        schema=schema,
    )


_STATISTICS = ["ts", "model_version", "ctr"]


def _to_parquet(chunks: Sequence[_Pending], layout: pa.DataType) -> bytes:
    """One Parquet part of ``chunks``, one table and row group per ``_ROWS_PER_STEP`` rows or so."""
    sink = io.BytesIO()
    schema = _part_schema(layout)
    # No dictionary pages for the unique ids and feature values: they never repeat enough to pay
    # for the dictionary build, which took half the flusher's CPU. Columnar parts use LZ4: 0.43
    # against 0.63 µs a row for zstd on the demo's 50,000-row parts, for 108 against 88 bytes a row.
    codec = "zstd" if pa.types.is_string(layout) else "lz4"
    # Statistics only for the scalar columns (min/max of the unique ids and of every hashed feature
    # cost ~6% of a flush and serve no reader: parts are found by their day and version folders).
    with pq.ParquetWriter(
        sink, schema, compression=codec, use_dictionary=["model_version"], write_statistics=_STATISTICS
    ) as writer:
        step: list[_Pending] = []
        size = 0
        for pending in chunks:
            step.append(pending)
            size += pending.n
            if size >= _ROWS_PER_STEP:
                writer.write_table(_table(step, schema), row_group_size=size)
                step, size = [], 0
        if step:
            writer.write_table(_table(step, schema), row_group_size=size)
    return sink.getvalue()


def warm_up_writer() -> None:
    """Write one tiny part to memory: the first Parquet write of a process costs ~0.2 s of CPU
    (zstd and writer set-up), which a server pays at start rather than inside its first flush."""
    rows = PredictionRows(["warm-up"], np.zeros(1), 0, 0, [b"{}"])
    _to_parquet([_pack(rows)], pa.string())


# --- reader -------------------------------------------------------------------------------------
def _days(start: date, end: date) -> Iterator[date]:
    day = start
    while day <= end:
        yield day
        day += timedelta(days=1)


def list_parts(
    root_uri: str, *, version: int, day: date, storage_options: dict[str, Any] | None = None
) -> list[str]:
    """Complete parts of one version and day, sorted; temporary (dot) names are never listed."""
    fs, root = filesystem(root_uri, storage_options)
    folder = join(root, f"dt={day.isoformat()}", f"version={int(version)}")
    if not fs.exists(folder):
        return []
    names = []
    for path in fs.ls(folder, detail=False):
        base = posixpath.basename(str(path).rstrip("/"))
        if base.startswith(_PART_PREFIX) and base.endswith(_PART_SUFFIX):
            names.append(str(path))
    return sorted(names)


def read_predictions(
    root_uri: str,
    *,
    version: int,
    start: date,
    end: date,
    impression_ids: Iterable[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    columns: Sequence[str] = READ_COLUMNS,
    batch_size: int = 65_536,
) -> Iterator[pa.RecordBatch]:
    """Stream the archived predictions of ``version`` served from ``start`` to ``end`` (inclusive).

    Only complete parts are read, one record batch at a time (memory stays bounded). With
    ``impression_ids``, only those rows are returned. A client retry can archive one impression
    twice; both rows are returned and the caller decides (e.g. keep the latest ``ts``).
    """
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    unknown = [c for c in columns if c not in ARCHIVE_SCHEMA.names]
    if unknown:
        raise ValueError(f"unknown archive columns {unknown}; known: {ARCHIVE_SCHEMA.names}")
    wanted = None
    if impression_ids is not None:
        wanted = pa.array(list(dict.fromkeys(impression_ids)), pa.string())
    fs, _ = filesystem(root_uri, storage_options)
    read_cols = list(dict.fromkeys([*columns, "impression_id"])) if wanted is not None else list(columns)
    for day in _days(start, end):
        for path in list_parts(root_uri, version=version, day=day, storage_options=storage_options):
            with fs.open(path, "rb") as fh:
                pf = pq.ParquetFile(fh)
                for batch in pf.iter_batches(batch_size=batch_size, columns=read_cols):
                    if wanted is not None:
                        batch = batch.filter(pc.is_in(batch.column("impression_id"), value_set=wanted))
                        if batch.num_rows == 0:
                            continue
                    yield batch.select(list(columns))


def archived_features(column: pa.Array | pa.ChunkedArray) -> list[dict[str, Any]]:
    """The feature mapping of each row of an archive ``features`` column, whichever layout wrote it.

    JSON parts give the mappings as served (minus unknown keys); struct parts give the spec's
    fields as archived (categorical values as their SipHash, numbers as sent), leaving out those
    the model read as missing (null, NaN, an empty list), so both layouts decode to the same keys.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if not pa.types.is_struct(column.type):
        return [orjson.loads(v) if v is not None else {} for v in column.to_pylist()]
    return [
        {k: v for k, v in (row or {}).items() if v is not None and v != [] and v == v}
        for row in column.to_pylist()
    ]
