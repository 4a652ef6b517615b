"""Content-checked artifact storage on fsspec: a local folder by default, ``s3://bucket/prefix`` at scale.

``put`` hashes the bytes first and writes them atomically (temporary name + rename locally, a single PUT on
object stores, both via ``reloop_service.storage.write_atomic``) under a content-addressed key
``<root>/<sha[:2]>/<sha>/<name>``: a crash never leaves a half-file under a final name, and a final
name is never overwritten with other bytes. Register a version only with the ``ArtifactRef`` that
``put`` returned.
``get`` refuses bytes whose sha256 or size differ from the record.
"""

from __future__ import annotations

import hashlib
import posixpath
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from reloop_service.registry.entities import ArtifactRef
from reloop_service.registry.errors import ArtifactIntegrityError, ArtifactMissingError
from reloop_service.storage import filesystem, is_local, join, write_atomic

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["ArtifactRef", "ArtifactStore", "ArtifactSweep", "sha256_hex", "sweep_artifacts"]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ArtifactStore:
    """Artifacts under one root URI (a path, ``file://``, or ``s3://bucket/prefix``)."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None) -> None:
        self.uri = uri.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self._fs, self._root = filesystem(self.uri, self.storage_options)

    def __repr__(self) -> str:  # never print storage options (credentials)
        return f"ArtifactStore({self.uri!r})"

    def _uri_of(self, path: str) -> str:
        if is_local(self._fs):
            return path
        protocol = self._fs.protocol if isinstance(self._fs.protocol, str) else self._fs.protocol[0]
        return f"{protocol}://{path}"

    def put(self, data: bytes, name: str) -> ArtifactRef:
        """Store ``data`` atomically and return where it is and what it hashes to."""
        clean = posixpath.normpath(name.strip("/"))
        if not name or clean.startswith("..") or clean in (".", ""):
            raise ValueError(f"artifact name {name!r} must be a relative path inside the store")
        digest = sha256_hex(data)
        path = join(self._root, digest[:2], digest, clean)
        if not (self._fs.exists(path) and sha256_hex(self._fs.cat_file(path)) == digest):
            write_atomic(self._fs, path, data)  # new, or a damaged copy under the content address
        return ArtifactRef(uri=self._uri_of(path), sha256=digest, size=len(data))

    def get(self, ref_or_uri: ArtifactRef | str, sha256: str | None = None) -> bytes:
        """Read an artifact and verify it; ``ArtifactIntegrityError`` (naming the URI) on any mismatch."""
        if isinstance(ref_or_uri, ArtifactRef):
            uri, expected, size = ref_or_uri.uri, sha256 or ref_or_uri.sha256, ref_or_uri.size
        else:
            if sha256 is None:
                raise ValueError("get(uri) needs the expected sha256; unverified loads are not allowed")
            uri, expected, size = ref_or_uri, sha256, None
        fs, path = filesystem(uri, self.storage_options)
        try:
            data = fs.cat_file(path)
        except FileNotFoundError as err:
            raise ArtifactMissingError(f"artifact {uri} is missing", uri=uri) from err
        actual = sha256_hex(data)
        if actual != expected.lower():
            raise ArtifactIntegrityError(
                f"artifact {uri} is corrupt or was tampered with: sha256 {actual} but the registry recorded"
                f" {expected}; refusing to load it",
                uri=uri,
            )
        if size is not None and len(data) != size:  # pragma: no cover - implied by the hash
            raise ArtifactIntegrityError(f"artifact {uri} has {len(data)} bytes, expected {size}", uri=uri)
        return bytes(data)

    def files(self) -> list[tuple[str, int, float]]:
        """Every file under the root as ``(uri, size, modified time in epoch seconds)``."""
        if not self._fs.exists(self._root):
            return []
        out = []
        for path, info in self._fs.find(self._root, detail=True).items():
            out.append((self._uri_of(path), int(info.get("size") or 0), _mtime(info)))
        return out

    def remove(self, uri: str) -> None:
        """Delete one file of this store (and, locally, the folders it leaves empty)."""
        fs, path = filesystem(uri, self.storage_options)
        fs.rm(path)
        if is_local(fs):
            parent = posixpath.dirname(path)
            root = self._root.rstrip("/")
            while parent.startswith(root + "/") and not fs.ls(parent):
                fs.rmdir(parent)
                parent = posixpath.dirname(parent)


def _mtime(info: dict[str, Any]) -> float:
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, int | float):
            return float(value)
    return time.time()  # unknown age: treat as new, so the grace period keeps it


@dataclass(frozen=True)
class ArtifactSweep:
    """What ``sweep_artifacts`` removed (or would remove, on a dry run) and what it left."""

    removed: tuple[str, ...]
    removed_bytes: int
    kept_referenced: int
    kept_young: int
    dry_run: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "removed": list(self.removed),
            "removed_bytes": self.removed_bytes,
            "kept_referenced": self.kept_referenced,
            "kept_young": self.kept_young,
            "dry_run": self.dry_run,
        }


def sweep_artifacts(
    engine: Engine,
    artifacts: ArtifactStore,
    *,
    grace_s: float,
    dry_run: bool = False,
    now: float | None = None,
) -> ArtifactSweep:
    """Remove artifacts no version references and older than ``grace_s``.

    Orphans come from a registration that failed after its artifact was written (the artifact goes first,
    then the row) and from ``.tmp-`` files of a crash mid-write. The grace period is what keeps a
    registration in flight safe: its artifact is new, so it is left alone even though no row names it yet.
    The referenced set is read before the files are listed, so a file registered in between is young.
    """
    from sqlalchemy import select

    from reloop_service.registry.db import session_scope
    from reloop_service.registry.orm import ModelVersionRow

    with session_scope(engine, readonly=True) as session:  # every version of every model
        referenced = set(session.execute(select(ModelVersionRow.artifact_uri).distinct()).scalars())
    now = time.time() if now is None else now
    removed: list[str] = []
    removed_bytes = kept_referenced = kept_young = 0
    for uri, size, mtime in sorted(artifacts.files()):
        if uri in referenced:
            kept_referenced += 1
        elif now - mtime < grace_s:
            kept_young += 1
        else:
            if not dry_run:
                artifacts.remove(uri)
            removed.append(uri)
            removed_bytes += size
    return ArtifactSweep(tuple(removed), removed_bytes, kept_referenced, kept_young, dry_run)
