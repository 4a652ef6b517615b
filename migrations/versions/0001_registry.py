"""Registry: model versions, production alias, append-only events, cycle runs.

Revision ID: 0001_registry
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_registry"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)
PRODUCTION_ONLY = sa.text("status = 'production'")


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("parent_version", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("status_changed_at", TS, nullable=False),
        sa.Column("rolled_back_at", TS, nullable=True),
        sa.Column("artifact_uri", sa.Text(), nullable=False),
        sa.Column("artifact_sha256", sa.String(64), nullable=False),
        sa.Column("artifact_size", sa.BigInteger(), nullable=False),
        sa.Column("feature_spec_hash", sa.String(128), nullable=True),
        sa.Column("train_config", JSONType, nullable=False),
        sa.Column("data_first_day", sa.Date(), nullable=True),
        sa.Column("data_last_day", sa.Date(), nullable=True),
        sa.Column("metrics", JSONType, nullable=False),
        sa.Column("gate_verdict", JSONType, nullable=True),
        sa.Column("cycle_date", sa.Date(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_model_versions"),
        sa.UniqueConstraint("model_name", "version", name="uq_model_versions_model_name_version"),
        sa.UniqueConstraint("model_name", "version", "status", name="uq_model_versions_name_version_status"),
        sa.ForeignKeyConstraint(
            ["model_name", "parent_version"],
            ["model_versions.model_name", "model_versions.version"],
            name="fk_model_versions_parent",
        ),
        sa.CheckConstraint(
            "status IN ('candidate', 'production', 'archived', 'rejected', 'failed')",
            name="ck_model_versions_status",
        ),
        sa.CheckConstraint("version >= 1", name="ck_model_versions_version_positive"),
        sa.CheckConstraint(
            "parent_version IS NULL OR parent_version < version", name="ck_model_versions_parent_before"
        ),
    )
    op.create_index(
        "uq_model_versions_one_production",
        "model_versions",
        ["model_name"],
        unique=True,
        sqlite_where=PRODUCTION_ONLY,
        postgresql_where=PRODUCTION_ONLY,
    )
    op.create_index("ix_model_versions_cycle_date", "model_versions", ["model_name", "cycle_date"])

    op.create_table(
        "production_alias",
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("model_name", name="pk_production_alias"),
        sa.ForeignKeyConstraint(
            ["model_name", "version", "status"],
            ["model_versions.model_name", "model_versions.version", "model_versions.status"],
            name="fk_production_alias_points_at_production",
            deferrable=True,
            initially="DEFERRED",
        ),
        sa.CheckConstraint("status = 'production'", name="ck_production_alias_status"),
    )

    op.create_table(
        "registry_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("from_version", sa.Integer(), nullable=True),
        sa.Column("to_version", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("details", JSONType, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_registry_events"),
        sa.CheckConstraint(
            "kind IN ('registered', 'promoted', 'rolled_back', 'rejected', 'failed')",
            name="ck_registry_events_kind",
        ),
    )
    op.create_index("ix_registry_events_model_version", "registry_events", ["model_name", "version"])

    op.create_table(
        "cycle_runs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("cycle_date", sa.Date(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("heartbeat_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("produced_version", sa.Integer(), nullable=True),
        sa.Column("details", JSONType, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_cycle_runs"),
        sa.UniqueConstraint("model_name", "cycle_date", name="uq_cycle_runs_model_name_cycle_date"),
        sa.CheckConstraint("status IN ('running', 'succeeded', 'failed')", name="ck_cycle_runs_status"),
        sa.CheckConstraint("attempt >= 1", name="ck_cycle_runs_attempt_positive"),
    )

    # The audit trail is append-only in the database itself, not only by convention.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION reloop_registry_events_append_only() RETURNS trigger AS $$
            BEGIN
                RAISE EXCEPTION 'registry_events is append-only';
            END;
            $$ LANGUAGE plpgsql
            """
        )
        op.execute(
            "CREATE TRIGGER registry_events_append_only BEFORE UPDATE OR DELETE ON registry_events "
            "FOR EACH ROW EXECUTE FUNCTION reloop_registry_events_append_only()"
        )
    else:
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER registry_events_no_{action.lower()} BEFORE {action} ON registry_events "
                "BEGIN SELECT RAISE(ABORT, 'registry_events is append-only'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS registry_events_append_only ON registry_events")
        op.execute("DROP FUNCTION IF EXISTS reloop_registry_events_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS registry_events_no_update")
        op.execute("DROP TRIGGER IF EXISTS registry_events_no_delete")
    op.drop_table("cycle_runs")
    op.drop_index("ix_registry_events_model_version", table_name="registry_events")
    op.drop_table("registry_events")
    op.drop_table("production_alias")
    op.drop_index("ix_model_versions_cycle_date", table_name="model_versions")
    op.drop_index("uq_model_versions_one_production", table_name="model_versions")
    op.drop_table("model_versions")
