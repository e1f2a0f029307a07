"""Task ids on reservations and ledger rows; a budget per task on API keys.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite cannot add columns with every option in place; PostgreSQL alters.
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("task_budget_micro_usd", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("reservations") as batch:
        batch.add_column(sa.Column("task_id", sa.String(128), nullable=True))
    with op.batch_alter_table("ledger") as batch:
        batch.add_column(sa.Column("task_id", sa.String(128), nullable=True))
    op.create_index("ix_ledger_key_task", "ledger", ["key_id", "task_id"])


def downgrade() -> None:
    op.drop_index("ix_ledger_key_task", table_name="ledger")
    with op.batch_alter_table("ledger") as batch:
        batch.drop_column("task_id")
    with op.batch_alter_table("reservations") as batch:
        batch.drop_column("task_id")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("task_budget_micro_usd")
