from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from reloop_service.data.ingest import EmptyDayError, IngestError, open_days, parse_event_time
from reloop_service.data.spec import FeatureSpec

from .datalog_helpers import DAY, WriteDay, good_rows


def _quarantine(logs_root: str, day: date = DAY) -> pa.Table:
    folder = Path(logs_root) / "_quarantine" / f"dt={day.isoformat()}"
    parts = sorted(folder.glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in parts]) if parts else pa.table({})


def _valid_ids(day_log) -> list[str]:
    return [i for b in day_log.iter_batches() for i in b.column("impression_id").to_pylist()]


def test_clean_day_streams_every_row_with_a_fixed_schema(
    spec: FeatureSpec, write_day: WriteDay, logs_root: str
) -> None:
    write_day(good_rows(10))
    write_day(
        pa.table(
            {
                **good_rows(5, start=10),
                "user_id": pa.array([f"u{k}" for k in range(5)]),  # another file may use strings
                "event_time": pa.array(np.arange(5) + 1709251200, pa.int64()),  # epoch seconds
                "extra": [1, 2, 3, 4, 5],
            }
        ),
        name="part-1.parquet",
    )
    day_log = open_days(logs_root, [DAY], spec, batch_size=4)
    r = day_log.report
    assert (r.rows_read, r.rows_valid, r.rows_quarantined) == (15, 15, 0)
    assert len(r.files) == 2 and r.quarantine_files == []
    batches = list(day_log.iter_batches())
    assert [b.num_rows for b in batches] == [4, 4, 4, 3]  # bounded, re-chunked across files
    assert all(b.schema == day_log.schema for b in batches)
    assert _valid_ids(day_log) == [f"i{k}" for k in range(15)]
    times = pa.concat_arrays([b.column("event_time") for b in batches]).to_pylist()
    assert times[10].isoformat() == "2024-03-01T00:00:00+00:00"
    assert batches[0].column("user_id").to_pylist() == ["0", "1", "2", "3"]


def test_streaming_memory_is_bounded_by_the_batch_size(
    spec: FeatureSpec, write_day: WriteDay, logs_root: str
) -> None:
    n = 300_000
    table = pa.table(good_rows(n))
    whole = table.nbytes  # about 23 MB in Arrow
    path = write_day(pa.table({}))
    pq.write_table(table, path, row_group_size=2_500)  # memory follows row groups, see ingest's docstring
    del table
    # Measured in a fresh interpreter: Arrow's default pool is process-wide, and background threads
    # that earlier tests leave winding down (archive flushers, servers) allocate from it too.
    probe = f"""
import json, sys
from datetime import date
import pyarrow as pa
from reloop_service.data.ingest import open_days
from reloop_service.data.spec import FeatureSpec
spec = FeatureSpec.from_dict(json.loads(sys.argv[1]))
day = date.fromisoformat({DAY.isoformat()!r})
day_log = open_days({logs_root!r}, [day], spec, batch_size=1000)
pool = pa.default_memory_pool()
base = pool.bytes_allocated()
peak = rows = 0
for b in day_log.iter_batches():
    assert b.num_rows <= 1000
    rows += b.num_rows
    peak = max(peak, pool.bytes_allocated() - base)
print(json.dumps({{"rows": rows, "peak": peak}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(spec.to_dict())],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["rows"] == n
    # A few row groups in flight, never the day. How many are in flight depends on how far Arrow's
    # reader gets ahead of this loop, which varies with the machine's load (2.5-4.1 MB measured for
    # row groups of 2,500 rows, whatever the day's size), so the day is large enough that a bound of
    # a quarter of it separates "row groups" from "the day" with room to spare.
    assert figures["peak"] < whole / 4, (figures, whole)


def test_missing_column_names_file_and_column(spec: FeatureSpec, write_day: WriteDay, logs_root: str) -> None:
    write_day(good_rows(3))
    rows = good_rows(3)
    del rows["device"]
    bad = write_day(rows, name="part-1.parquet")
    with pytest.raises(IngestError) as err:
        open_days(logs_root, [DAY], spec)
    assert str(bad) in str(err.value) and "'device'" in str(err.value) and "missing" in str(err.value)


@pytest.mark.parametrize(
    ("column", "values"),
    [
        ("label", ["yes", "no", "yes"]),
        ("price", ["1.0", "2.0", "3.0"]),
        ("tags", ["a", "b", "c"]),
        ("event_time", [[1], [2], [3]]),
        ("user_id", [[1], [2], [3]]),
    ],
)
def test_wrong_type_names_file_and_column(
    spec: FeatureSpec, write_day: WriteDay, logs_root: str, column: str, values: list
) -> None:
    rows = good_rows(3)
    rows[column] = values
    bad = write_day(rows)
    with pytest.raises(IngestError) as err:
        open_days(logs_root, [DAY], spec)
    message = str(err.value)
    assert str(bad) in message and f"'{column}'" in message and "type" in message


def test_corrupt_file_names_the_file(spec: FeatureSpec, write_day: WriteDay, logs_root: str) -> None:
    write_day(good_rows(3))
    corrupt = Path(logs_root) / f"dt={DAY.isoformat()}" / "part-9.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet at all")
    with pytest.raises(IngestError) as err:
        open_days(logs_root, [DAY], spec)
    assert str(corrupt) in str(err.value)


def test_truncated_file_names_the_file(spec: FeatureSpec, write_day: WriteDay, logs_root: str) -> None:
    path = write_day(good_rows(50))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IngestError, match=str(path)):
        open_days(logs_root, [DAY], spec)


def test_empty_day(spec: FeatureSpec, write_day: WriteDay, logs_root: str, tmp_path: Path) -> None:
    with pytest.raises(EmptyDayError, match="2024-03-01"):
        open_days(str(tmp_path / "nothing"), [DAY], spec)
    write_day(pa.table(good_rows(1)).slice(0, 0))
    with pytest.raises(EmptyDayError, match="no rows"):
        open_days(logs_root, [DAY], spec)
    # one good day and one missing day in a range: the missing one is named
    write_day(good_rows(2), day=DAY + timedelta(days=1))
    with pytest.raises(EmptyDayError, match="2024-03-01"):
        open_days(logs_root, [DAY, DAY + timedelta(days=1)], spec)


def test_bad_rows_are_quarantined_with_reasons_and_nothing_is_lost(
    spec: FeatureSpec, write_day: WriteDay, logs_root: str
) -> None:
    rows = good_rows(12)
    rows["label"][1] = None  # null label
    rows["label"][2] = 2  # label outside {0, 1}
    rows["event_time"][3] = "yesterday-ish"  # unparsable time
    rows["event_time"][4] = None  # null time
    rows["impression_id"][5] = "i0"  # duplicate of row 0 in the same file
    rows["impression_id"][6] = None  # null impression id
    write_day(rows)
    second = good_rows(3, start=100)
    second["impression_id"][0] = "i7"  # duplicate across files of the same day
    write_day(second, name="part-1.parquet")

    day_log = open_days(logs_root, [DAY], spec, batch_size=5)
    r = day_log.report
    assert r.quarantined == {
        "null_label": 1,
        "bad_label": 1,
        "bad_event_time": 2,
        "duplicate_impression_id": 2,
        "null_impression_id": 1,
    }
    assert r.rows_read == 15 and r.rows_valid == 8
    assert r.rows_valid + r.rows_quarantined == r.rows_read
    valid = _valid_ids(day_log)
    assert valid == ["i0", "i7", "i8", "i9", "i10", "i11", "i101", "i102"]

    q = _quarantine(logs_root)
    assert q.num_rows == r.rows_quarantined
    got = sorted(zip(q.column("source_row").to_pylist(), q.column("reason").to_pylist(), strict=True))
    assert got == [
        (0, "duplicate_impression_id"),
        (1, "null_label"),
        (2, "bad_label"),
        (3, "bad_event_time"),
        (4, "bad_event_time"),
        (5, "duplicate_impression_id"),
        (6, "null_impression_id"),
    ]
    # every original column is kept, so a quarantined row can be fixed and replayed
    assert {"user_id", "device", "price", "tags", "label", "event_time", "source_file"} <= set(q.column_names)
    assert r.quarantine_uri is not None and r.quarantine_uri.endswith("_quarantine/dt=2024-03-01")
    # nothing lost: every input id is either valid or quarantined, exactly once
    assert len(valid) + q.num_rows == 15


def test_second_epoch_yields_the_same_rows_without_rewriting_quarantine(
    spec: FeatureSpec, write_day: WriteDay, logs_root: str
) -> None:
    rows = good_rows(9)
    rows["label"][4] = 7
    write_day(rows)
    day_log = open_days(logs_root, [DAY], spec, batch_size=2)
    part = next((Path(logs_root) / "_quarantine" / f"dt={DAY.isoformat()}").glob("part-*.parquet"))
    stamp = part.stat().st_mtime_ns
    first = _valid_ids(day_log)
    second = _valid_ids(day_log)
    assert first == second and len(first) == 8 and "i4" not in first
    assert part.stat().st_mtime_ns == stamp
    assert len(list(part.parent.glob("part-*.parquet"))) == 1
    # re-opening the day replaces (not appends to) the quarantine
    open_days(logs_root, [DAY], spec)
    assert _quarantine(logs_root).num_rows == 1


def test_dry_run_counts_without_writing(spec: FeatureSpec, write_day: WriteDay, logs_root: str) -> None:
    rows = good_rows(4)
    rows["label"][0] = None
    write_day(rows)
    day_log = open_days(logs_root, [DAY], spec, quarantine=False)
    assert day_log.report.quarantined == {"null_label": 1}
    assert not (Path(logs_root) / "_quarantine").exists()


def test_duplicates_are_per_day(spec: FeatureSpec, write_day: WriteDay, logs_root: str) -> None:
    write_day(good_rows(3))
    write_day(good_rows(3), day=DAY + timedelta(days=1))
    day_log = open_days(logs_root, [DAY, DAY + timedelta(days=1)], spec)
    assert day_log.report.rows_valid == 6 and day_log.report.quarantined == {}


def test_event_time_formats() -> None:
    parsed = parse_event_time(
        pa.array(["2024-03-01T10:00:00Z", "2024-03-01 12:00:00+02:00", "2024-03-01T10:00:00", "nope", None])
    )
    iso = [v.isoformat() if v else None for v in parsed.to_pylist()]
    assert iso == [
        "2024-03-01T10:00:00+00:00",
        "2024-03-01T10:00:00+00:00",
        "2024-03-01T10:00:00+00:00",
        None,
        None,
    ]
    secs = parse_event_time(pa.array([1709287200, 1709287200.5, -5, 1e15, float("nan")]))
    assert [v.isoformat() if v else None for v in secs.to_pylist()] == [
        "2024-03-01T10:00:00+00:00",
        "2024-03-01T10:00:00.500000+00:00",
        None,
        None,
        None,
    ]
    naive = parse_event_time(pa.array([0], pa.timestamp("s")))
    assert naive.type == pa.timestamp("us", tz="UTC")
    assert naive[0].as_py().isoformat() == "1970-01-01T00:00:00+00:00"


def test_reads_through_fsspec_memory_filesystem(spec: FeatureSpec) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    with fs.open(f"/reloop-test-logs/dt={DAY.isoformat()}/part-0.parquet", "wb") as fh:
        pq.write_table(pa.table(good_rows(6)), fh)
    try:
        day_log = open_days("memory://reloop-test-logs", [DAY], spec, batch_size=4)
        assert day_log.report.rows_valid == 6
        assert day_log.report.files[0].startswith("memory://")
        assert sum(b.num_rows for b in day_log.iter_batches()) == 6
    finally:
        fs.rm("/reloop-test-logs", recursive=True)


def test_quarantine_is_readable_as_a_dataset(spec: FeatureSpec, write_day: WriteDay, logs_root: str) -> None:
    rows = good_rows(4)
    rows["label"][3] = -1
    write_day(rows)
    open_days(logs_root, [DAY], spec)
    dataset = ds.dataset(Path(logs_root) / "_quarantine", format="parquet", partitioning="hive")
    assert dataset.to_table().column("reason").to_pylist() == ["bad_label"]
