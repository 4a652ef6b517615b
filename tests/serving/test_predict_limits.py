"""Predict size limits (413/422), content type (415), what is archived, the byte-bounded archive.

Through real HTTP: the ASGI app under TestClient, and a real uvicorn for the body-size refusal
that must come before the body is read whole.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from reloop_service.data.archive import PredictionArchive, PredictionRows, archived_features, features_schema
from reloop_service.serving.app import create_app

from .conftest import SPEC, Registry, make_settings, start_server
from .test_routes import _metric

LIMITS = {
    "max_batch": 5,
    "max_body_bytes": 4096,
    "max_item_keys": 3,
    "max_string_length": 16,
    "max_list_length": 4,
}


ITEM0 = ["body", "items", 0, "features"]


@pytest.fixture
def limited(registry: Registry, tmp_path: Path) -> Iterator[tuple[TestClient, Registry]]:
    registry.promote(registry.add_version(1))
    settings = make_settings(tmp_path, **LIMITS)
    with TestClient(create_app(settings)) as client:
        yield client, registry


def _post(client: TestClient, body: bytes | dict, **headers: str):  # type: ignore[no-untyped-def]
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post(
        "/v1/predict", content=content, headers={"Content-Type": "application/json", **headers}
    )


@pytest.mark.parametrize(
    ("items", "loc", "words"),
    [
        ([{"features": {}}] * 6, ["body", "items"], "at most 5 items"),
        (
            [{"features": {"a": 1, "b": 2, "c": 3, "d": 4}}],
            ["body", "items", 0, "features"],
            "at most 3 items",
        ),
        (
            [{"features": {"site": "x" * 17}}],
            ["body", "items", 0, "features", "site"],
            "at most 16 characters",
        ),
        (
            [{"features": {}}, {"features": {"k" * 17: "v"}}],
            ["body", "items", 1, "features", "k" * 17],
            "feature name",
        ),
        (
            [{"features": {"tags": ["a", "b", "c", "d", "e"]}}],
            ["body", "items", 0, "features", "tags"],
            "at most 4",
        ),
        ([{"features": {"tags": ["a", "y" * 17]}}], ["body", "items", 0, "features", "tags"], "at most 16"),
    ],
)
def test_limits_on_items_keys_strings_and_lists_are_422_naming_the_field(
    limited: tuple[TestClient, Registry], items: list, loc: list, words: str
) -> None:
    client, _ = limited
    r = _post(client, {"items": items})
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]  # RFC 9457 problem details: each invalid field under "errors"
    match = [e for e in errors if e["loc"] == loc]
    assert match, errors
    assert words in match[0]["msg"]
    assert "x" * 17 not in r.text and "y" * 17 not in r.text  # the oversized input is not echoed


def test_at_the_limits_the_request_is_served(limited: tuple[TestClient, Registry]) -> None:
    client, _ = limited
    item = {"features": {"site": "s" * 16, "device": "d", "tags": ["t" * 16] * 4}}
    r = _post(client, {"items": [item] * 5})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 5


def test_a_body_over_the_limit_is_413_by_length_and_while_streaming(
    limited: tuple[TestClient, Registry],
) -> None:
    client, _ = limited
    big = orjson.dumps({"items": [{"features": {"site": "s"}}], "pad": "x" * 5000})
    r = _post(client, big)
    assert r.status_code == 413, r.text
    assert "4096 bytes" in r.text

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked, refused once past the limit
        yield b'{"items": [{"features": {"site": "'
        for _ in range(100):
            yield b"x" * 1000

    r = client.post("/v1/predict", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    metrics = client.get("/metrics").text
    assert _metric(metrics, "reloop_http_requests_total", route="/v1/predict", status="413") == 2.0


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "text/json"])
def test_a_body_that_is_not_json_is_415(limited: tuple[TestClient, Registry], content_type: str) -> None:
    client, _ = limited
    body = orjson.dumps({"items": [{"features": {"site": "s"}}]})
    r = client.post("/v1/predict", content=body, headers={"Content-Type": content_type})
    assert r.status_code == 415, r.text
    # JSON with a charset, and the +json suffix, are JSON
    assert _post(client, body, **{"Content-Type": "application/json; charset=utf-8"}).status_code == 200
    r = client.post("/v1/predict", content=body, headers={"Content-Type": "application/vnd.x+json"})
    assert r.status_code == 200


@pytest.mark.parametrize("layout", ["hashed", "json"])
def test_only_the_spec_features_are_archived(registry: Registry, tmp_path: Path, layout: str) -> None:
    from reloop_service.data.transforms import stable_hash

    registry.promote(registry.add_version(1))
    settings = make_settings(
        tmp_path, archive_flush_seconds=60, archive_flush_rows=10_000, archive_features=layout
    )
    items = [
        {"features": {"site": "a", "junk": "j" * 100, "more": ["q"]}, "impression_id": "with-junk"},
        {"features": {"site": "b", "price": 2.5}, "impression_id": "clean"},
    ]
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/predict", json={"items": items})
        assert r.status_code == 200, r.text
    parts = sorted(Path(settings.resolved_archive_uri).rglob("part-*.parquet"))
    tables = [pq.read_table(p) for p in parts]
    kinds = {str(t.schema.field("features").type) for t in tables}
    struct = [f.name for f in features_schema(SPEC)]
    if layout == "hashed":  # the spec's fields as columns, categorical values as their SipHash
        assert all([f.name for f in t.schema.field("features").type] == struct for t in tables), kinds
        a, b = (int(x) for x in stable_hash(["a", "b"]))
        expected = {"with-junk": {"site": a}, "clean": {"site": b, "price": 2.5}}
    else:  # the values as sent, one JSON object a row
        assert kinds == {"string"}
        expected = {"with-junk": {"site": "a"}, "clean": {"site": "b", "price": 2.5}}
    rows = {
        i: f
        for t in tables
        for i, f in zip(
            t.column("impression_id").to_pylist(), archived_features(t.column("features")), strict=True
        )
    }
    assert rows == expected


def test_the_archive_buffer_is_bounded_in_bytes_and_overflow_is_counted(
    registry: Registry, tmp_path: Path
) -> None:
    registry.promote(registry.add_version(1))
    settings = make_settings(
        tmp_path,
        archive_flush_seconds=600,
        archive_flush_rows=1_000_000,
        archive_buffer_rows=1_000_000,
        archive_buffer_bytes=4096,
        archive_block_ms=0,
        archive_features="json",  # values as sent: a long string is archived whole (hashed: 8 bytes)
    )
    item = {"features": {"site": "s" * 1000, "device": "d"}}  # ~1 KB archived per item
    with TestClient(create_app(settings)) as client:
        for _ in range(4):  # 5 items: more than the 4096-byte bound, so never buffered
            assert client.post("/v1/predict", json={"items": [item] * 5}).status_code == 200
        metrics = client.get("/metrics").text
        assert _metric(metrics, "reloop_archive_overflow_rows_total") == 20
        assert _metric(metrics, "reloop_archive_dropped_rows_total") == 20
        assert _metric(metrics, "reloop_archive_buffer_bytes") == 0
        assert client.post("/v1/predict", json={"items": [item]}).status_code == 200  # 1 item fits
        metrics = client.get("/metrics").text
        kept = _metric(metrics, "reloop_archive_queue_depth") + _metric(
            metrics, "reloop_archive_rows_written_total"
        )
        assert kept == 1
        assert _metric(metrics, "reloop_archive_buffer_bytes") <= 4096
        assert _metric(metrics, "reloop_archive_overflow_rows_total") == 20


def test_archive_byte_bound_unit(tmp_path: Path) -> None:
    """The bound counts encoded features, ids and scores; rows over it are refused, not buffered."""
    import numpy as np

    arch = PredictionArchive(
        str(tmp_path / "a"), buffer_rows=10_000, buffer_bytes=2000, block_ms=0, start=False
    )

    def rows(n: int, prefix: str) -> PredictionRows:
        return PredictionRows(
            impression_ids=[f"{prefix}{i}" for i in range(n)],
            ctr=np.full(n, 0.5),
            model_version=1,
            ts_us=1_700_000_000_000_000,
            features=[{"site": "x" * 50}] * n,
        )

    assert arch.append(rows(10, "a"))
    assert 10 * 50 < arch.buffered_bytes <= 2000
    kept = arch.buffered_bytes
    assert not arch.append(rows(20, "b"))
    assert arch.buffered_bytes == kept and arch.counters.overflow_rows == 20
    arch.close()
    assert arch.buffered_bytes == 0 and arch.counters.written_rows == 10


def test_uvicorn_answers_413_before_the_body_is_sent_whole(registry: Registry, tmp_path: Path) -> None:
    """A client announces 100 MB and sends 1 KB: the answer comes without the rest being sent."""
    registry.promote(registry.add_version(1))
    server = start_server(registry.settings, tmp_path, RELOOP_MAX_BODY_BYTES="65536")
    try:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000000\r\n\r\n" + b"{" + b" " * 1023
            )
            received = b""
            deadline = time.monotonic() + 10
            while b"\r\n\r\n" not in received and time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        assert received.startswith(b"HTTP/1.1 413"), received[:200]
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=30)
