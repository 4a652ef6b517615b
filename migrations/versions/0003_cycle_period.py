"""Cycle periods: runs and versions name their period by its start (``2024-05-01`` or ``2024-05-01T13``).

``cycle_runs.period`` is the claim's key (unique per model, replacing ``cycle_date``, which stays as the
day the period starts on); ``model_versions.period`` is the lineage's name for the cycle that trained
the version. Existing rows are daily periods: their period is their date.

Revision ID: 0003_cycle_period
Revises: 0002_cycle_skipped
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003_cycle_period"
down_revision: str | None = "0002_cycle_skipped"
branch_labels = None
depends_on = None


def _date_text(column: str) -> str:
    # SQLite stores a Date as its ISO text already; PostgreSQL formats it explicitly.
    if op.get_bind().dialect.name == "postgresql":
        return f"to_char({column}, 'YYYY-MM-DD')"
    return column


def upgrade() -> None:
    op.add_column("cycle_runs", sa.Column("period", sa.String(32), nullable=True))
    op.execute(f"UPDATE cycle_runs SET period = {_date_text('cycle_date')}")
    with op.batch_alter_table("cycle_runs", recreate="auto") as batch:
        batch.alter_column("period", existing_type=sa.String(32), nullable=False)
        batch.drop_constraint("uq_cycle_runs_model_name_cycle_date", type_="unique")
        batch.create_unique_constraint("uq_cycle_runs_model_name_period", ["model_name", "period"])
    op.add_column("model_versions", sa.Column("period", sa.String(32), nullable=True))
    op.execute(
        f"UPDATE model_versions SET period = {_date_text('cycle_date')} WHERE cycle_date IS NOT NULL"
    )


def downgrade() -> None:
    # Sub-daily runs would collide on the old (model_name, cycle_date) key: refuse rather than drop them.
    bind = op.get_bind()
    sub_daily = bind.execute(sa.text("SELECT COUNT(*) FROM cycle_runs WHERE LENGTH(period) > 10")).scalar()
    if sub_daily:
        raise RuntimeError(
            f"{sub_daily} cycle run(s) of sub-daily periods: delete them before downgrading below 0003"
        )
    with op.batch_alter_table("cycle_runs", recreate="auto") as batch:
        batch.drop_constraint("uq_cycle_runs_model_name_period", type_="unique")
        batch.create_unique_constraint("uq_cycle_runs_model_name_cycle_date", ["model_name", "cycle_date"])
        batch.drop_column("period")
    with op.batch_alter_table("model_versions", recreate="auto") as batch:
        batch.drop_column("period")
