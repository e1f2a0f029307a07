"""Several fronts on one database: fronts with heartbeats, the front holding each reservation,
money counters per key and per (key, task), and rate buckets shared through the database.

The counters start from what the ledger and the open reservations already say, so budgets
carry over exactly.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fronts",
        sa.Column("front_id", sa.String(96), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "money",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("task_id", sa.String(128), primary_key=True),
        sa.Column("spent_micro_usd", sa.BigInteger(), nullable=False),
        sa.Column("reserved_micro_usd", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "rate_buckets",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("requests_level", sa.Float(), nullable=False),
        sa.Column("tokens_level", sa.Float(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
    )
    with op.batch_alter_table("reservations") as batch:
        batch.add_column(sa.Column("front_id", sa.String(96), nullable=True))
    op.create_index("ix_reservations_front_id", "reservations", ["front_id"])
    # One row per key and per (key, task) seen so far: spent from the ledger, reserved from
    # the open reservations.
    op.execute(
        """
        INSERT INTO money (key_id, task_id, spent_micro_usd, reserved_micro_usd)
        SELECT key_id, task_id, SUM(spent), SUM(reserved) FROM (
            SELECT key_id, '' AS task_id, amount_micro_usd AS spent, 0 AS reserved FROM ledger
            UNION ALL
            SELECT key_id, task_id, amount_micro_usd, 0 FROM ledger WHERE task_id IS NOT NULL
            UNION ALL
            SELECT key_id, '', 0, reserved_micro_usd FROM reservations
            UNION ALL
            SELECT key_id, task_id, 0, reserved_micro_usd FROM reservations
                WHERE task_id IS NOT NULL
        ) AS amounts
        GROUP BY key_id, task_id
        """
    )


def downgrade() -> None:
    op.drop_index("ix_reservations_front_id", table_name="reservations")
    with op.batch_alter_table("reservations") as batch:
        batch.drop_column("front_id")
    op.drop_table("rate_buckets")
    op.drop_table("money")
    op.drop_table("fronts")
