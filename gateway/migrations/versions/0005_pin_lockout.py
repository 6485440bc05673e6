"""parties: count wrong PINs and lock the phone dialog after three

Revision ID: 0005_pin_lockout
Revises: 0004_bundles
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

import gateway.tables

revision = "0005_pin_lockout"
down_revision = "0004_bundles"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("parties") as batch:
        batch.add_column(sa.Column("pin_failures", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(
            sa.Column("pin_locked_until", gateway.tables.UtcDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("parties") as batch:
        batch.drop_column("pin_locked_until")
        batch.drop_column("pin_failures")
