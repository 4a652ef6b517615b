"""Fixtures for scale-out tests: a real S3-compatible HTTP server (moto's server mode) on 127.0.0.1.

Tests talk to it over HTTP through s3fs exactly as they would to MinIO or AWS, so no code path is
mocked: only the server on the other end of the socket is a small one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from tests.support.net import free_port

torch.set_num_threads(1)


@dataclass(frozen=True)
class S3Server:
    """Where the test S3 server listens and the credentials it accepts."""

    endpoint_url: str
    bucket: str
    access_key_id: str = "testing-key"
    secret_access_key: str = "testing-secret"
    region: str = "us-east-1"
    created: list[str] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """The ``RELOOP_`` variables a process needs to reach this server (subprocesses, compose)."""
        return {
            "RELOOP_S3_ENDPOINT_URL": self.endpoint_url,
            "RELOOP_S3_ACCESS_KEY_ID": self.access_key_id,
            "RELOOP_S3_SECRET_ACCESS_KEY": self.secret_access_key,
            "RELOOP_S3_REGION": self.region,
        }

    @property
    def settings_overrides(self) -> dict[str, Any]:
        """The same, as keyword arguments of ``Settings``."""
        return {
            "s3_endpoint_url": self.endpoint_url,
            "s3_access_key_id": self.access_key_id,
            "s3_secret_access_key": self.secret_access_key,
            "s3_region": self.region,
        }

    def uri(self, *parts: str) -> str:
        return "s3://" + "/".join([self.bucket, *(p.strip("/") for p in parts)])


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """Start moto's S3 server on a free local port, make a bucket, stop it at session end."""
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")

    # botocore must never fall back to real AWS credentials or a proxy for the local server.
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "NO_PROXY")}
    os.environ["AWS_ACCESS_KEY_ID"] = "testing-key"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "testing-secret"
    os.environ["NO_PROXY"] = ",".join(filter(None, [saved["NO_PROXY"], "127.0.0.1", "localhost"]))

    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    info = S3Server(endpoint_url=f"http://127.0.0.1:{port}", bucket=f"reloop-test-{uuid.uuid4().hex[:8]}")
    client = boto3.client(
        "s3",
        endpoint_url=info.endpoint_url,
        aws_access_key_id=info.access_key_id,
        aws_secret_access_key=info.secret_access_key,
        region_name=info.region,
    )
    client.create_bucket(Bucket=info.bucket)
    try:
        yield info
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_prefix(s3_server: S3Server) -> str:
    """A fresh ``s3://bucket/<uuid>`` prefix per test, so tests never see each other's objects."""
    return s3_server.uri(uuid.uuid4().hex[:12])


@pytest.fixture
def s3_storage_options(s3_server: S3Server) -> dict[str, Any]:
    """fsspec options built by the real ``Settings`` from the server's ``RELOOP_`` variables."""
    from reloop_service.config import Settings

    return Settings(**s3_server.settings_overrides).storage_options()
