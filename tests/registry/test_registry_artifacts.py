"""The artifact store: atomic, content-addressed writes and verified reads."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import Engine

from reloop_service.registry import store
from reloop_service.registry.artifacts import ArtifactStore
from reloop_service.registry.db import session_scope
from reloop_service.registry.errors import ArtifactIntegrityError, ArtifactMissingError


def test_put_get_round_trip_and_registered_ref(tmp_path: Path, migrated_engine: Engine) -> None:
    artifacts = ArtifactStore(str(tmp_path / "artifacts"))
    data = b"checkpoint-bytes" * 1000
    ref = artifacts.put(data, "ctr/model.ckpt")
    assert ref.sha256 == hashlib.sha256(data).hexdigest() and ref.size == len(data)
    assert Path(ref.uri).is_file() and Path(ref.uri).name == "model.ckpt"
    leftovers = [p for p in (tmp_path / "artifacts").rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []
    assert artifacts.put(data, "ctr/model.ckpt") == ref  # same bytes, same place: idempotent
    with session_scope(migrated_engine) as session:
        version = store.register_version(session, model_name="ctr", artifact=ref, actor="cycle")
    with session_scope(migrated_engine, readonly=True) as session:
        loaded = store.get_version(session, model_name="ctr", version=version.version).artifact
    assert artifacts.get(loaded) == data
    assert artifacts.get(loaded.uri, loaded.sha256) == data


def test_tampered_artifact_is_refused_naming_the_uri(tmp_path: Path) -> None:
    artifacts = ArtifactStore(str(tmp_path))
    ref = artifacts.put(b"good model", "m.ckpt")
    Path(ref.uri).write_bytes(b"evil model")
    with pytest.raises(ArtifactIntegrityError, match="tampered") as info:
        artifacts.get(ref)
    assert info.value.uri == ref.uri and ref.uri in str(info.value)
    with pytest.raises(ArtifactIntegrityError):
        artifacts.get(ref.uri, hashlib.sha256(b"good model").hexdigest())
    Path(ref.uri).unlink()
    with pytest.raises(ArtifactMissingError, match="missing"):
        artifacts.get(ref)
    with pytest.raises(ValueError, match="sha256"):
        artifacts.get(ref.uri)
    Path(ref.uri).write_bytes(b"damaged")
    assert artifacts.put(b"good model", "m.ckpt") == ref  # a damaged copy is rewritten, not trusted
    assert artifacts.get(ref) == b"good model"


def test_bad_names_are_refused(tmp_path: Path) -> None:
    artifacts = ArtifactStore(str(tmp_path))
    for name in ("", "../escape.ckpt", "a/../../b"):
        with pytest.raises(ValueError, match="relative path"):
            artifacts.put(b"x", name)
