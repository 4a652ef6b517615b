"""fsspec plumbing shared by logs, artifacts, archive and reports: local paths and ``s3://`` alike."""

from __future__ import annotations

import posixpath
import uuid
from typing import Any

import fsspec
from fsspec import AbstractFileSystem


def filesystem(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[AbstractFileSystem, str]:
    """Return the filesystem for ``uri`` and the path inside it (no protocol for local files)."""
    protocol = fsspec.utils.get_protocol(uri)
    options = dict(storage_options or {}) if protocol in ("s3", "s3a") else {}
    if options or protocol in ("s3", "s3a"):
        # Other processes (API replicas, torchrun ranks) write under the same prefixes: a cached
        # listing would hide their new files from this long-lived process.
        options.setdefault("use_listings_cache", False)
    fs, path = fsspec.core.url_to_fs(uri, **options)
    return fs, path


def join(base: str, *parts: str) -> str:
    """Join URI segments with ``/`` whatever the filesystem."""
    return posixpath.join(base.rstrip("/"), *parts)


def is_local(fs: AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def write_atomic(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` so no reader ever sees a partial file under ``path``.

    Local files go to a temporary name in the same folder and are renamed (atomic on POSIX);
    object stores get a single PUT, which is atomic by construction.
    """
    parent = posixpath.dirname(path)
    if is_local(fs):
        fs.makedirs(parent, exist_ok=True)
        tmp = posixpath.join(parent, f".tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}")
        try:
            with fs.open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                import os

                os.fsync(fh.fileno())
            fs.mv(tmp, path)
        finally:
            if fs.exists(tmp):
                fs.rm(tmp)
    else:
        fs.pipe_file(path, data)
