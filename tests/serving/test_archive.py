"""The prediction archive: real Parquet parts on disk, real threads, real crash (SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, date, datetime
from itertools import pairwise
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from reloop_service.data.archive import PredictionArchive, PredictionRows, list_parts, read_predictions
from tests.support.specs import SERVING_SPEC
from tests.support.wait import wait_for


def _us(day: date, second: int = 0) -> int:
    return int(datetime(day.year, day.month, day.day, 0, 0, second, tzinfo=UTC).timestamp() * 1_000_000)


def _rows(prefix: str, n: int, *, version: int = 1, day: date = date(2024, 5, 1)) -> PredictionRows:
    return PredictionRows(
        impression_ids=[f"{prefix}-{i}" for i in range(n)],
        ctr=np.linspace(0.01, 0.99, n),
        model_version=version,
        ts_us=_us(day),
        features=[{"site": f"s{i}", "price": i * 1.5, "tags": ["a", "b"], "none": None} for i in range(n)],
    )


def _read_all(root: str, version: int, start: date, end: date, **kw) -> list[dict]:
    out: list[dict] = []
    for batch in read_predictions(root, version=version, start=start, end=end, **kw):
        out.extend(batch.to_pylist())
    return out


def test_flush_on_close_partitions_by_day_and_version(tmp_path: Path) -> None:
    root = str(tmp_path / "archive")
    arch = PredictionArchive(root, replica_id="r1", flush_rows=10_000, flush_seconds=60)
    assert arch.append(_rows("a", 5, version=1, day=date(2024, 5, 1)))
    assert arch.append(_rows("b", 3, version=2, day=date(2024, 5, 1)))
    assert arch.append(_rows("c", 4, version=1, day=date(2024, 5, 2)))
    assert list_parts(root, version=1, day=date(2024, 5, 1)) == []  # nothing flushed yet
    arch.close()
    assert arch.counters.written_rows == 12 and arch.queue_depth == 0
    parts = list_parts(root, version=1, day=date(2024, 5, 1))
    assert len(parts) == 1
    name = os.path.basename(parts[0])
    assert name.startswith("part-r1-") and name.endswith(".parquet")
    assert "dt=2024-05-01/version=1" in parts[0]
    v1 = _read_all(root, 1, date(2024, 5, 1), date(2024, 5, 2))
    assert sorted(r["impression_id"] for r in v1) == sorted(
        [f"a-{i}" for i in range(5)] + [f"c-{i}" for i in range(4)]
    )
    assert {r["model_version"] for r in v1} == {1}
    only = _read_all(root, 2, date(2024, 5, 1), date(2024, 5, 1), impression_ids=["b-1", "zzz"])
    assert [r["impression_id"] for r in only] == ["b-1"]
    assert only[0]["ctr"] == pytest.approx(0.5)
    table = pq.read_table(parts[0])
    assert table.schema.field("ts").type.tz == "UTC"
    assert '"tags":["a","b"]' in table.column("features")[0].as_py()
    # one day outside the range returns nothing
    assert _read_all(root, 1, date(2024, 5, 3), date(2024, 5, 9)) == []


def test_flushes_every_n_rows_and_every_t_seconds(tmp_path: Path) -> None:
    root = str(tmp_path / "a")
    arch = PredictionArchive(root, flush_rows=10, flush_seconds=0.2)
    arch.append(_rows("x", 10))
    wait_for(lambda: arch.counters.written_rows >= 10, timeout=5, what="the row-triggered flush", every=0.01)
    assert arch.counters.written_rows == 10  # row trigger
    arch.append(_rows("y", 3))
    wait_for(lambda: arch.counters.written_rows >= 13, timeout=5, what="the time-triggered flush", every=0.01)
    assert arch.counters.written_rows == 13  # time trigger (3 < flush_rows)
    arch.close()
    assert len(_read_all(root, 1, date(2024, 5, 1), date(2024, 5, 1))) == 13


def test_full_buffer_blocks_briefly_then_drops_and_counts(tmp_path: Path) -> None:
    arch = PredictionArchive(
        str(tmp_path / "a"), flush_rows=1000, flush_seconds=60, buffer_rows=8, block_ms=30, start=False
    )
    assert arch.append(_rows("a", 6))
    t0 = time.monotonic()
    assert not arch.append(_rows("b", 5))  # no flusher running: waits block_ms, then drops
    waited = time.monotonic() - t0
    assert 0.025 <= waited < 1.0
    assert arch.counters.dropped_rows == 5 and arch.counters.blocked_appends == 1
    assert arch.queue_depth == 6
    arch.close()
    assert arch.counters.written_rows == 6


def test_write_errors_are_counted_retried_and_never_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    root = str(blocker / "archive")  # a path below a regular file: every write fails
    arch = PredictionArchive(root, flush_rows=1000, flush_seconds=60, max_attempts=2, start=False)
    assert arch.append(_rows("a", 4))
    assert arch.flush() == 0
    assert arch.counters.write_errors == 1 and arch.queue_depth == 4  # kept for a retry
    assert arch.flush() == 0
    assert arch.counters.write_errors == 2 and arch.counters.dropped_rows == 4 and arch.queue_depth == 0
    arch.close()


def test_append_after_close_is_dropped_not_raised(tmp_path: Path) -> None:
    arch = PredictionArchive(str(tmp_path / "a"))
    arch.close()
    assert arch.append(_rows("a", 2)) is False
    assert arch.counters.dropped_rows == 2


def test_reader_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="before start"):
        list(read_predictions(str(tmp_path), version=1, start=date(2024, 1, 2), end=date(2024, 1, 1)))
    with pytest.raises(ValueError, match="unknown archive columns"):
        list(
            read_predictions(
                str(tmp_path), version=1, start=date(2024, 1, 1), end=date(2024, 1, 1), columns=("nope",)
            )
        )


_WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from reloop_service.data.archive import PredictionArchive, PredictionRows
    root = sys.argv[1]
    arch = PredictionArchive(root, replica_id="k", flush_rows=200, flush_seconds=0.05, buffer_rows=10**6)
    i = 0
    while True:
        n = 50
        arch.append(PredictionRows(
            impression_ids=[f"id-{i + j}" for j in range(n)], ctr=np.full(n, 0.5), model_version=3,
            ts_us=1714521600000000, features=[{"f": "x" * 200}] * n))
        i += n
        print(i, arch.counters.written_rows, flush=True)
        time.sleep(0.001)  # pace the writer: parts land at ~20 Hz, so the kill falls mid-stream
    """
)


def test_sigkill_during_writes_leaves_only_complete_parts(tmp_path: Path) -> None:
    root = str(tmp_path / "archive")
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, root], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    last = (0, 0)
    while last[1] < 2000:  # let several parts land, then kill mid-stream
        line = proc.stdout.readline()
        assert line, "writer died"
        a, w = line.split()
        last = (int(a), int(w))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    appended_at_kill = last[0] + 50  # at most one more append after the last print
    rows = _read_all(root, 3, date(2024, 5, 1), date(2024, 5, 1))  # every visible part is complete
    ids = [r["impression_id"] for r in rows]
    assert len(ids) == len(set(ids))
    assert len(ids) >= last[1]  # everything reported written is there
    numbers = sorted(int(x.split("-")[1]) for x in ids)
    # what is there is a prefix of what was appended: losses only at the unflushed tail
    assert numbers == list(range(len(numbers)))
    assert appended_at_kill - len(numbers) <= 10**6
    folder = tmp_path / "archive" / "dt=2024-05-01" / "version=3"
    for p in folder.iterdir():
        if p.name.startswith("part-"):
            pq.read_metadata(p)  # a visible part always has a valid footer
        else:
            assert p.name.startswith(".tmp-")  # at most a hidden temporary, never listed


def test_features_are_archived_as_served_and_never_fail_the_append(tmp_path: Path) -> None:
    """Features are encoded at append: a later change to the caller's dict is not archived, and
    what orjson refuses (an int beyond 64 bits) still lands, losslessly, without raising."""
    import json

    root = str(tmp_path / "arch")
    rows = _rows("f", 3)
    rows.features[2]["big"] = 2**70  # type: ignore[index]
    pre_encoded = PredictionRows(
        impression_ids=["f-pre"],
        ctr=np.array([0.5]),
        model_version=1,
        ts_us=rows.ts_us,
        features=[b'{"site":"pre"}'],
    )
    with PredictionArchive(root, start=False) as archive:
        assert archive.append(rows) and archive.append(pre_encoded)
        rows.features[0]["site"] = "changed-after-serving"  # type: ignore[index]
    got = {
        r["impression_id"]: json.loads(r["features"])
        for r in _read_all(root, 1, date(2024, 5, 1), date(2024, 5, 1), columns=("impression_id", "features"))
    }
    assert got["f-0"]["site"] == "s0"
    assert got["f-2"]["big"] == 2**70
    assert got["f-pre"] == {"site": "pre"}
    assert archive.counters.written_rows == 4 and archive.counters.dropped_rows == 0


def test_feature_columns_round_trip_as_a_struct_beside_json_parts(tmp_path: Path) -> None:
    """Serving archives the transform's own arrays: the part holds the spec's fields as a struct of
    hashes and numbers that fold back into the very model inputs that were served; a JSON part of
    the same version and day (the layout written before) is still read by ``read_predictions``."""
    import pyarrow as pa

    from reloop_service.data.archive import FeatureColumns, archived_features, features_schema
    from reloop_service.data.transforms import bucketize, stable_hash, transform_record_columns

    spec = SERVING_SPEC
    records = [
        {"site": "a", "device": 7, "price": 2.5, "tags": ["x", "y"], "junk": 1},
        {"site": None, "price": True, "tags": "solo"},
        {"device": 1.0, "tags": []},
    ]
    served, unknown, read = transform_record_columns(spec, records)
    assert unknown == ("junk",)
    features = FeatureColumns(spec, read.n, read.hashes, read.valid, read.numeric, read.multi_lengths)
    root = str(tmp_path / "arch")
    with PredictionArchive(root, start=False) as archive:
        ids = ["c-0", "c-1", "c-2"]
        assert archive.append(
            PredictionRows(ids, np.array([0.1, 0.2, 0.3]), 1, _us(date(2024, 5, 1)), features)
        )
        assert archive.buffered_bytes > 0
        archive.flush()
        assert archive.append(_rows("j", 2))  # JSON layout, same version and day: its own part
        bad = FeatureColumns(spec, 2, read.hashes, read.valid, read.numeric, read.multi_lengths)
        assert not archive.append(PredictionRows(["x", "y"], np.zeros(2), 1, _us(date(2024, 5, 1)), bad))
        assert archive.counters.dropped_rows == 2  # refused and counted, never raised
        archive.flush()
        short = FeatureColumns(spec, 3, read.hashes[:-1], read.valid[:-1], read.numeric, read.multi_lengths)
        assert archive.append(PredictionRows(ids, np.zeros(3), 1, _us(date(2024, 5, 1)), short))
        assert archive.flush() == 0 and archive.counters.write_errors == 1  # the part is refused, counted
    parts = list_parts(root, version=1, day=date(2024, 5, 1))
    layouts = {pq.read_schema(p).field("features").type for p in parts}
    names = {tuple(f.name for f in t) if pa.types.is_struct(t) else str(t) for t in layouts}
    assert names == {"string", tuple(f.name for f in features_schema(spec))}
    struct_part = next(p for p in parts if pa.types.is_struct(pq.read_schema(p).field("features").type))
    table = pq.read_table(struct_part)
    assert table.column("impression_id").to_pylist() == ids

    def h(*values: object) -> list[int]:
        return [int(x) for x in stable_hash(list(values))]

    assert archived_features(table.column("features")) == [
        {"site": h("a")[0], "device": h("7")[0], "price": 2.5, "tags": h("x", "y")},
        {"price": 1.0, "tags": h("solo")},
        {"device": h(1)[0]},
    ]
    # the struct folds into the model inputs that were scored
    struct = table.column("features").combine_chunks()
    for j, f in enumerate(spec.categorical):
        col = struct.field(f.name)
        ids_ = bucketize(
            col.fill_null(0).to_numpy(), col.is_valid().to_numpy(zero_copy_only=False), f.buckets
        )
        assert np.array_equal(ids_, served.cat[:, j].numpy()), f.name
    tags = struct.field("tags")
    folded = bucketize(tags.flatten().to_numpy(), np.ones(len(tags.flatten()), bool), 51)
    assert folded.tolist() == [v for v in served.multi[:, 0, :].flatten().tolist() if v]
    got = _read_all(root, 1, date(2024, 5, 1), date(2024, 5, 1), columns=("impression_id", "features"))
    assert sorted(r["impression_id"] for r in got) == ["c-0", "c-1", "c-2", "j-0", "j-1"]


def test_many_batches_of_any_size_archive_as_one_batch_would(tmp_path: Path) -> None:
    """A flush of many served batches (single items and larger, empty bags, nulls) writes the same
    features, in the same order, as the whole list archived as one batch."""
    from reloop_service.data.archive import FeatureColumns, archived_features
    from reloop_service.data.transforms import transform_record_columns

    spec = SERVING_SPEC
    rng = np.random.default_rng(5)
    records = []
    for i in range(60):
        rec: dict[str, object] = {
            "site": f"s{rng.integers(9)}",
            "device": int(rng.integers(4)),
            "price": i * 0.5,
        }
        rec["tags"] = [f"t{rng.integers(30)}" for _ in range(int(rng.integers(0, 6)))]
        if i % 7 == 0:
            rec["site"] = None
        if i % 5 == 0:
            rec.pop("tags")
        records.append(rec)
    sizes = [1, 1, 4, 1, 9, 1, 1, 13, 2, 1, 26]
    assert sum(sizes) == len(records)

    def archive(root: str, batches: list[list[dict[str, object]]]) -> list[dict[str, object]]:
        with PredictionArchive(root, start=False) as arch:
            start = 0
            for batch in batches:
                _, _, read = transform_record_columns(spec, batch)
                cols = FeatureColumns(spec, read.n, read.hashes, read.valid, read.numeric, read.multi_lengths)
                ids = [f"r{start + k}" for k in range(len(batch))]
                assert arch.append(PredictionRows(ids, np.zeros(len(batch)), 1, _us(date(2024, 5, 1)), cols))
                start += len(batch)
            assert arch.flush() == len(records)
        (part,) = list_parts(root, version=1, day=date(2024, 5, 1))
        table = pq.read_table(part)
        assert table.column("impression_id").to_pylist() == [f"r{k}" for k in range(len(records))]
        return archived_features(table.column("features"))

    starts = np.cumsum([0, *sizes])
    many = archive(str(tmp_path / "many"), [records[a:b] for a, b in pairwise(starts)])
    assert many == archive(str(tmp_path / "one"), [records])


def test_ids_as_one_text_or_as_strings_archive_exactly(tmp_path: Path) -> None:
    """Ids reach the part byte for byte whichever way they came: the server's UUIDv7 text, client
    strings (non-ASCII ones too), one item, or a text that does not fit its batch (the strings are
    used). An id that is not a string is refused at append and counted, never raised."""
    from reloop_service.data.archive import FeatureColumns
    from reloop_service.data.transforms import transform_record_columns
    from reloop_service.serving.ids import uuid7_block

    spec = SERVING_SPEC

    def cols(n: int) -> FeatureColumns:
        _, _, read = transform_record_columns(spec, [{"site": f"s{i}", "price": 1.0} for i in range(n)])
        return FeatureColumns(spec, read.n, read.hashes, read.valid, read.numeric, read.multi_lengths)

    ts = _us(date(2024, 5, 1))
    made, text = uuid7_block(4)
    client = ["é-1", "日本-2", "plain"]
    root = str(tmp_path / "arch")
    with PredictionArchive(root, start=False) as archive:
        assert archive.append(PredictionRows(made, np.zeros(4), 1, ts, cols(4), id_text=text))
        assert archive.append(PredictionRows(client, np.zeros(3), 1, ts, cols(3)))
        assert archive.append(PredictionRows(["ü"], np.zeros(1), 1, ts, cols(1)))
        assert archive.append(PredictionRows(["a", "b"], np.zeros(2), 1, ts, cols(2), id_text=text))
        assert not archive.append(PredictionRows([5, "x"], np.zeros(2), 1, ts, cols(2)))  # type: ignore[list-item]
        assert archive.counters.dropped_rows == 2
        assert archive.append(PredictionRows(["j-é", "j-2"], np.zeros(2), 1, ts, [{"a": 1}, {"b": 2}]))
        assert archive.flush() == 12
    got = _read_all(root, 1, date(2024, 5, 1), date(2024, 5, 1), columns=("impression_id",))
    assert [r["impression_id"] for r in got if not r["impression_id"].startswith("j-")] == [
        *made,
        *client,
        "ü",
        "a",
        "b",
    ]
    assert sorted(r["impression_id"] for r in got if r["impression_id"].startswith("j-")) == ["j-2", "j-é"]


def test_a_large_flush_is_written_in_row_groups_of_the_step_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each step of about ``_ROWS_PER_STEP`` rows is one table and one row group; every row lands in
    order; only the scalar columns carry statistics (the ids' and features' min/max cost CPU and
    serve no reader)."""
    import reloop_service.data.archive as archive_mod
    from reloop_service.data.archive import FeatureColumns
    from reloop_service.data.transforms import transform_record_columns

    monkeypatch.setattr(archive_mod, "_ROWS_PER_STEP", 10)
    spec = SERVING_SPEC
    root = str(tmp_path / "arch")
    with PredictionArchive(root, start=False) as archive:
        for b in range(9):  # 9 batches of 4: steps of 12, 12, 12 rows
            recs = [{"site": f"s{b}-{i}", "price": float(i)} for i in range(4)]
            _, _, read = transform_record_columns(spec, recs)
            cols = FeatureColumns(spec, read.n, read.hashes, read.valid, read.numeric, read.multi_lengths)
            ids = [f"r{4 * b + i}" for i in range(4)]
            assert archive.append(PredictionRows(ids, np.full(4, b / 10), 1, _us(date(2024, 5, 1)), cols))
        assert archive.flush() == 36
    (part,) = list_parts(root, version=1, day=date(2024, 5, 1))
    meta = pq.ParquetFile(part).metadata
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [12, 12, 12]
    table = pq.read_table(part)
    assert table.column("impression_id").to_pylist() == [f"r{k}" for k in range(36)]
    assert table.column("ctr").to_pylist() == [b / 10 for b in range(9) for _ in range(4)]
    first = meta.row_group(0)
    names = {first.column(c).path_in_schema: first.column(c) for c in range(meta.num_columns)}
    assert all(names[c].is_stats_set for c in ("ts", "model_version", "ctr"))
    assert not names["impression_id"].is_stats_set


def test_batches_copied_into_small_slabs_archive_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Appends copy a batch's arrays into preallocated slabs that are reused once written. With
    slabs a few batches big: batches crossing a slab's end, a batch larger than any slab (kept as
    its own arrays), a failed write retried while new batches fill reused slabs, all archive
    exactly what the same batches archive with the default slab size."""
    import pyarrow as pa

    import reloop_service.data.archive as archive_mod
    from reloop_service.data.archive import FeatureColumns, archived_features
    from reloop_service.data.transforms import transform_record_columns
    from reloop_service.serving.ids import uuid7_block

    spec = SERVING_SPEC
    rng = np.random.default_rng(3)
    served = []
    for b in range(16):
        n = 14 if b == 6 else int(rng.integers(1, 5))  # 14 rows: more values than a small slab holds
        recs = [
            {
                "site": f"s{b}-{i}",
                "device": int(rng.integers(5)),
                "price": float(10 * b + i),
                "tags": [f"t{k}" for k in range(int(rng.integers(0, 4)))],
            }
            for i in range(n)
        ]
        served.append((recs, *uuid7_block(n), rng.random(n)))

    def archive(root: Path) -> list[tuple[str, float, dict[str, object]]]:
        blocker = root / "blocker"
        blocker.parent.mkdir()
        blocker.write_text("x")  # a file where the archive's folder goes: writes fail until it goes
        with PredictionArchive(str(blocker / "arch"), start=False, max_attempts=5) as arch:
            for b, (recs, ids, text, ctr) in enumerate(served):
                _, _, read = transform_record_columns(spec, recs)
                cols = FeatureColumns(spec, read.n, read.hashes, read.valid, read.numeric, read.multi_lengths)
                assert arch.append(PredictionRows(ids, ctr, 1, _us(date(2024, 5, 1)), cols, id_text=text))
                if b == 4:
                    assert arch.flush() == 0 and arch.counters.write_errors == 1  # kept for a retry
                if b == 9:
                    blocker.unlink()
                    assert arch.flush() == sum(len(s[0]) for s in served[:10])
        assert arch.counters.dropped_rows == 0
        day = date(2024, 5, 1)
        batches = read_predictions(
            str(blocker / "arch"), version=1, start=day, end=day, columns=("impression_id", "ctr", "features")
        )
        table = pa.Table.from_batches(list(batches)).sort_by("impression_id")  # UUIDv7: issue order
        feats = archived_features(table.column("features"))
        ids, ctr = table.column("impression_id").to_pylist(), table.column("ctr").to_pylist()
        return list(zip(ids, ctr, feats, strict=True))

    reference = archive(tmp_path / "default")
    for name, size in (("_SLAB_HASHES", 24), ("_SLAB_FLOATS", 16), ("_SLAB_INTS", 8), ("_SLAB_TEXT", 200)):
        monkeypatch.setattr(archive_mod, name, size)
    small = archive(tmp_path / "small")
    assert small == reference
    assert [r[0] for r in small] == [i for s in served for i in s[1]]
    assert [r[1] for r in small] == [c for s in served for c in s[3].tolist()]
