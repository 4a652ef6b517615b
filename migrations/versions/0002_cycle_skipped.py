"""cycle_runs.status may be 'skipped': a day not trained on by design (no data, too few rows or labels).

Revision ID: 0002_cycle_skipped
Revises: 0001_registry
"""

from __future__ import annotations

from alembic import op

revision: str = "0002_cycle_skipped"
down_revision: str | None = "0001_registry"
branch_labels = None
depends_on = None

WITH_SKIPPED = "status IN ('running', 'succeeded', 'failed', 'skipped')"
WITHOUT_SKIPPED = "status IN ('running', 'succeeded', 'failed')"


def _replace_check(condition: str) -> None:
    # batch mode: SQLite cannot alter a constraint, so Alembic copies the table (PostgreSQL alters it).
    # Names go through the metadata's naming convention, as in 0001 (the database holds
    # ``ck_cycle_runs_ck_cycle_runs_status``).
    with op.batch_alter_table("cycle_runs", recreate="auto") as batch:
        batch.drop_constraint("ck_cycle_runs_status", type_="check")
        batch.create_check_constraint("ck_cycle_runs_status", condition)


def upgrade() -> None:
    _replace_check(WITH_SKIPPED)


def downgrade() -> None:
    # A skipped run becomes a failed one (its reason is kept in ``error``).
    op.execute("UPDATE cycle_runs SET status = 'failed' WHERE status = 'skipped'")
    _replace_check(WITHOUT_SKIPPED)
