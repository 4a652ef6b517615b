"""SQLAlchemy 2.x typed ORM of the registry. Private to the store: rows never leave it.

Database-level guarantees (not only application checks):
- ``model_versions``: ``(model_name, version)`` unique, so racing registrations cannot share a number;
  a partial unique index allows at most one ``production`` row per model.
- ``production_alias``: one row per model name (primary key), and a deferred composite foreign key
  ``(model_name, version, status) -> model_versions`` with ``status`` fixed to ``production``: at commit
  the alias must point at a version whose status is ``production``. Together: never two production
  versions, and the alias never points at an archived one.
- ``registry_events``: append-only, enforced by triggers created in the migration.
- ``cycle_runs``: ``(model_name, period)`` unique, which is the claim of a period (``period`` is its
  start's name: ``2024-05-01`` for a day, ``2024-05-01T13`` for an hour; ``cycle_date`` the day).

JSON columns are ``JSON`` on SQLite and ``JSONB`` on PostgreSQL. Timestamps are stored in UTC and come
back timezone-aware on both backends.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    Dialect,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

PortableJSON = JSON().with_variant(postgresql.JSONB(), "postgresql")

VERSION_STATUSES = ("candidate", "production", "archived", "rejected", "failed")
EVENT_KINDS = ("registered", "promoted", "rolled_back", "rejected", "failed")
CYCLE_STATUSES = ("running", "succeeded", "failed", "skipped")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite has no time zone type)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the registry; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {  # noqa: RUF012 (SQLAlchemy reads this class attribute)
        datetime: UTCDateTime(),
        date: Date(),
        dict[str, Any]: PortableJSON,
    }


class ModelVersionRow(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("model_name", "version", name="uq_model_versions_model_name_version"),
        UniqueConstraint("model_name", "version", "status", name="uq_model_versions_name_version_status"),
        ForeignKeyConstraint(
            ["model_name", "parent_version"],
            ["model_versions.model_name", "model_versions.version"],
            name="fk_model_versions_parent",
        ),
        CheckConstraint(_in("status", VERSION_STATUSES), name="status"),
        CheckConstraint("version >= 1", name="version_positive"),
        CheckConstraint("parent_version IS NULL OR parent_version < version", name="parent_before"),
        Index(
            "uq_model_versions_one_production",
            "model_name",
            unique=True,
            sqlite_where=text("status = 'production'"),
            postgresql_where=text("status = 'production'"),
        ),
        Index("ix_model_versions_cycle_date", "model_name", "cycle_date"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    parent_version: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime]
    status_changed_at: Mapped[datetime]
    rolled_back_at: Mapped[datetime | None]
    artifact_uri: Mapped[str] = mapped_column(Text)
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    artifact_size: Mapped[int] = mapped_column(BigInteger)
    feature_spec_hash: Mapped[str | None] = mapped_column(String(128))
    train_config: Mapped[dict[str, Any]]
    data_first_day: Mapped[date | None]
    data_last_day: Mapped[date | None]
    metrics: Mapped[dict[str, Any]]
    gate_verdict: Mapped[dict[str, Any] | None]
    cycle_date: Mapped[date | None]
    period: Mapped[str | None] = mapped_column(String(32))


class ProductionAliasRow(Base):
    __tablename__ = "production_alias"
    __table_args__ = (
        ForeignKeyConstraint(
            ["model_name", "version", "status"],
            ["model_versions.model_name", "model_versions.version", "model_versions.status"],
            name="fk_production_alias_points_at_production",
            deferrable=True,
            initially="DEFERRED",
        ),
        CheckConstraint("status = 'production'", name="status"),
    )

    model_name: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="production")
    updated_at: Mapped[datetime]
    updated_by: Mapped[str] = mapped_column(String(200))


class RegistryEventRow(Base):
    __tablename__ = "registry_events"
    __table_args__ = (
        CheckConstraint(_in("kind", EVENT_KINDS), name="kind"),
        Index("ix_registry_events_model_version", "model_name", "version"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    version: Mapped[int | None] = mapped_column(Integer)
    from_version: Mapped[int | None] = mapped_column(Integer)
    to_version: Mapped[int | None] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    details: Mapped[dict[str, Any]]


class CycleRunRow(Base):
    __tablename__ = "cycle_runs"
    __table_args__ = (
        UniqueConstraint("model_name", "period", name="uq_cycle_runs_model_name_period"),
        CheckConstraint(_in("status", CYCLE_STATUSES), name="status"),
        CheckConstraint("attempt >= 1", name="attempt_positive"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(200))
    cycle_date: Mapped[date]
    period: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(20))
    attempt: Mapped[int] = mapped_column(Integer)
    owner: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    produced_version: Mapped[int | None] = mapped_column(Integer)
    details: Mapped[dict[str, Any]]
