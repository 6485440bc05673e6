"""immigration_outbox: vacuumed after every 200 changed rows on PostgreSQL, whatever its size

The outbox is a queue: every notice is inserted, then updated once delivered. Each update leaves the old
row version's entry in the (delivered_at, next_attempt_at) index, under delivered_at NULL, where the
claim looks, until a vacuum removes it. With PostgreSQL's default (a vacuum after 20 % of the table has
changed) the claim read about 10,750 such entries a scan at the end of a simulated border day, and more
every day the table grows. A fixed threshold keeps the dead entries to a few hundred.

Revision ID: 0014_outbox_vacuum
Revises: 0013_filer_status_index
Create Date: 2026-11-26
"""

from alembic import op

revision = "0014_outbox_vacuum"
down_revision = "0013_filer_status_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE immigration_outbox SET (autovacuum_vacuum_scale_factor = 0, "
            "autovacuum_vacuum_threshold = 200, autovacuum_analyze_scale_factor = 0.05)"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE immigration_outbox RESET (autovacuum_vacuum_scale_factor, "
            "autovacuum_vacuum_threshold, autovacuum_analyze_scale_factor)"
        )
