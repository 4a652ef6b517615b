"""Entry points for other domains: open the registry once, checked against the Alembic head."""

from __future__ import annotations

from sqlalchemy import Engine

from reloop_service.config import Settings
from reloop_service.registry.artifacts import ArtifactStore
from reloop_service.registry.db import ensure_at_head, make_engine


def open_registry(settings: Settings) -> Engine:
    """An engine on ``settings.resolved_database_url`` that is known to be at the Alembic head.

    Raises ``SchemaOutOfDateError`` (telling the user to run ``reloop db upgrade``) otherwise; serving, the
    cycle and every CLI command except ``db upgrade``/``db current`` start through here.
    """
    engine = make_engine(settings.resolved_database_url)
    try:
        ensure_at_head(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def artifact_store(settings: Settings) -> ArtifactStore:
    """The artifact store of ``settings`` (local folder under the data dir, or S3 with its options)."""
    return ArtifactStore(settings.resolved_artifacts_uri, settings.storage_options())
