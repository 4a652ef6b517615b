"""Entry points for other domains: open the registry once, checked against the Alembic head."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from sqlalchemy import Engine

from reloop_service.config import Settings
from reloop_service.registry.artifacts import ArtifactStore
from reloop_service.registry.db import ensure_at_head, normalize_url, settings_engine
from reloop_service.registry.entities import ModelVersion, Production
from reloop_service.registry.errors import SchemaOutOfDateError

T = TypeVar("T")


def missing_sqlite_file(url: str) -> str | None:
    """The path of a SQLite file URL whose file does not exist yet (``None`` otherwise)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return None if Path(database).exists() else database


def open_registry(settings: Settings) -> Engine:
    """An engine on ``settings.resolved_database_url`` that is known to be at the Alembic head.

    Raises ``SchemaOutOfDateError`` (telling the user to run ``reloop db upgrade``) otherwise; serving, the
    cycle and every CLI command except ``db upgrade``/``db current`` start through here.
    """
    url = settings.resolved_database_url
    missing = missing_sqlite_file(url)
    if missing is not None:  # opening it would leave an empty registry.db behind
        raise SchemaOutOfDateError(
            f"registry database {missing} does not exist (data dir {settings.data_dir.resolve()}); "
            "run `reloop db upgrade`"
        )
    engine = settings_engine(settings)
    try:
        ensure_at_head(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def artifact_store(settings: Settings) -> ArtifactStore:
    """The artifact store of ``settings`` (local folder under the data dir, or S3 with its options)."""
    return ArtifactStore(settings.resolved_artifacts_uri, settings.storage_options())


@dataclass(frozen=True)
class Promoted(Generic[T]):
    """What ``promote_version`` did: production now, whether it moved, and what ``verify`` returned."""

    production: Production
    changed: bool
    verified: T | None


def promote_version(
    engine: Engine,
    *,
    model_name: str,
    version: int,
    actor: str,
    reason: str,
    verify: Callable[[ModelVersion], T],
    expected_current: int | None = None,
    force: bool = False,
    deadline: float | None = None,
) -> Promoted[T]:
    """The one promote of the CLI and the admin API: verify the artifact, then move production in one
    transaction.

    ``verify(info)`` loads the target for real (sha256, decode, warm-up) before anything moves and raises
    when it cannot be served. The write is a compare-and-set on ``expected_current`` when given, otherwise
    unconditional under the locked alias row (concurrent promotes queue); promoting the version already in
    production changes nothing (``changed=False``, ``verified=None``). A write past ``deadline`` is rolled
    back.
    """
    from reloop_service.registry import store
    from reloop_service.registry.db import run_transaction, session_scope

    with session_scope(engine, readonly=True, deadline=deadline) as session:
        info = store.get_version(session, model_name=model_name, version=version)
        current = store.get_production(session, model_name=model_name)
    if current is not None and current.version.version == version and expected_current is None:
        return Promoted(production=current, changed=False, verified=None)
    verified = verify(info)
    production = run_transaction(
        engine,
        lambda session: store.promote(
            session,
            model_name=model_name,
            version=version,
            actor=actor,
            reason=reason,
            expected_current=expected_current,
            unconditional=expected_current is None,
            force=force,
        ),
        deadline=deadline,
    )
    return Promoted(production=production, changed=True, verified=verified)
