"""Storage on a real S3-compatible HTTP server: atomic writes, artifacts, logs and the archive.

Each test works under its own ``s3://bucket/<uuid>`` prefix on the session's moto server.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import boto3
import numpy as np
import pytest

from reloop_service.storage import filesystem, join, write_atomic

from .conftest import S3Server


def s3_client(server: S3Server) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        aws_access_key_id=server.access_key_id,
        aws_secret_access_key=server.secret_access_key,
        region_name=server.region,
    )


def keys_under(server: S3Server, uri: str) -> list[str]:
    """Every object key under ``uri``, listed by boto3 directly (not through s3fs's caches)."""
    prefix = uri.removeprefix(f"s3://{server.bucket}/")
    pages = s3_client(server).get_paginator("list_objects_v2").paginate(Bucket=server.bucket, Prefix=prefix)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def assert_single_put(server: S3Server, key: str) -> None:
    """A multipart upload leaves an ETag ending in ``-<parts>``; a single PUT does not."""
    head = s3_client(server).head_object(Bucket=server.bucket, Key=key)
    assert "-" not in head["ETag"].strip('"'), f"{key} was written as a multipart upload"


def test_write_atomic_on_s3_is_one_put_and_leaves_no_temporaries(
    s3_server: S3Server, s3_prefix: str, s3_storage_options: dict[str, Any]
) -> None:
    fs, root = filesystem(s3_prefix, s3_storage_options)
    path = join(root, "a", "blob.bin")
    data = np.random.default_rng(0).bytes(3 * 2**20)
    write_atomic(fs, path, data)
    assert fs.cat_file(path) == data
    keys = keys_under(s3_server, s3_prefix)
    assert [k.rsplit("/", 1)[-1] for k in keys] == ["blob.bin"], keys
    assert_single_put(s3_server, keys[0])

    write_atomic(fs, path, b"second")
    assert fs.cat_file(path) == b"second"
    assert len(keys_under(s3_server, s3_prefix)) == 1


def test_listing_sees_objects_written_by_another_client(
    s3_server: S3Server, s3_prefix: str, s3_storage_options: dict[str, Any]
) -> None:
    """A long-lived process must see files other processes (replicas, ranks) wrote after it listed."""
    fs, root = filesystem(s3_prefix, s3_storage_options)
    write_atomic(fs, join(root, "d", "one"), b"1")
    assert len(fs.ls(join(root, "d"), detail=False)) == 1
    key = f"{s3_prefix.removeprefix(f's3://{s3_server.bucket}/')}/d/two"
    s3_client(s3_server).put_object(Bucket=s3_server.bucket, Key=key, Body=b"2")
    fs_again, _ = filesystem(s3_prefix, s3_storage_options)
    assert len(fs_again.ls(join(root, "d"), detail=False)) == 2


def test_archive_parts_on_s3_are_single_puts_named_by_replica(
    s3_server: S3Server, s3_prefix: str, s3_storage_options: dict[str, Any]
) -> None:
    from reloop_service.data.archive import PredictionArchive, PredictionRows, read_predictions

    ts = datetime(2024, 5, 3, 12, tzinfo=UTC)
    ts_us = int(ts.timestamp() * 1_000_000)
    root = join(s3_prefix, "archive")
    written: dict[str, float] = {}
    for replica in ("api-a", "api-b"):
        archive = PredictionArchive(
            root, storage_options=s3_storage_options, replica_id=replica, flush_rows=10_000, start=False
        )
        for batch in range(3):
            ids = [f"{replica}-{batch}-{i}" for i in range(50)]
            ctr = np.linspace(0.01, 0.5, 50) + batch * 0.01
            archive.append(
                PredictionRows(
                    impression_ids=ids,
                    ctr=ctr,
                    model_version=7,
                    ts_us=ts_us,
                    features=[{"f": i} for i in range(50)],
                )
            )
            written.update(zip(ids, ctr.tolist(), strict=True))
        archive.close()
        assert archive.counters.written_rows == 150 and archive.counters.write_errors == 0

    keys = keys_under(s3_server, root)
    names = [k.rsplit("/", 1)[-1] for k in keys]
    assert len(names) == 2 and len(set(names)) == 2
    # Replica ids go into part names (``-`` is not in the file-name alphabet, so it becomes ``_``).
    assert sorted(n.split("-")[1] for n in names) == ["api_a", "api_b"], names
    for key in keys:
        assert "/dt=2024-05-03/version=7/" in key
        assert_single_put(s3_server, key)

    got: dict[str, float] = {}
    for batch in read_predictions(
        root, version=7, start=date(2024, 5, 3), end=date(2024, 5, 3), storage_options=s3_storage_options
    ):
        got.update(
            zip(batch.column("impression_id").to_pylist(), batch.column("ctr").to_pylist(), strict=True)
        )
    assert got.keys() == written.keys()
    assert np.allclose([got[k] for k in written], list(written.values()))


def test_s3_credentials_never_print(s3_server: S3Server) -> None:
    from reloop_service.config import Settings

    settings = Settings(**s3_server.settings_overrides)
    assert s3_server.secret_access_key not in repr(settings)
    assert s3_server.secret_access_key not in str(settings.model_dump())
    assert settings.storage_options()["secret"] == s3_server.secret_access_key


def test_artifacts_on_s3_roundtrip_with_sha256(
    s3_server: S3Server, s3_prefix: str, s3_storage_options: dict[str, Any]
) -> None:
    import hashlib

    from reloop_service.registry.artifacts import ArtifactStore

    store = ArtifactStore(join(s3_prefix, "artifacts"), storage_options=s3_storage_options)
    data = np.random.default_rng(1).bytes(1_000_000)
    ref = store.put(data, "v1/checkpoint.pt")
    assert ref.uri.startswith("s3://")
    assert ref.sha256 == hashlib.sha256(data).hexdigest() and ref.size == len(data)
    assert store.get(ref) == data
    keys = keys_under(s3_server, join(s3_prefix, "artifacts"))
    assert len(keys) == 1 and not any("tmp" in k.rsplit("/", 1)[-1] for k in keys), keys
    assert_single_put(s3_server, keys[0])

    # A corrupted object must be refused, not loaded.
    s3_client(s3_server).put_object(Bucket=s3_server.bucket, Key=keys[0], Body=data[:-1] + b"\x00")
    with pytest.raises(Exception, match=r"(?i)sha256|checksum|integrity|corrupt"):
        store.get(ref)
