"""Entry points for other domains: open the registry once, checked against the Alembic head."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from reloop_service.config import Settings
from reloop_service.registry.artifacts import ArtifactStore
from reloop_service.registry.db import ensure_at_head, normalize_url, settings_engine
from reloop_service.registry.errors import SchemaOutOfDateError


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
