"""workers: contingency crossings recorded by officers

Revision ID: 0012_workers
Revises: 0011_operations
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

import gateway.tables

revision = "0012_workers"
down_revision = "0011_operations"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_AT = gateway.tables.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "crossings",
        sa.Column("crossing_id", _ID, autoincrement=True, nullable=False),
        sa.Column("control_point", sa.String(length=5), nullable=False),
        sa.Column("lane", sa.String(length=10), nullable=True),
        sa.Column("vehicle", sa.String(length=8), nullable=False),
        sa.Column("bundle_id", sa.String(length=12), nullable=True),
        sa.Column("ccrns", sa.Text(), nullable=False),
        sa.Column("crossed_at", _AT, nullable=False),
        sa.Column("recorded_at", _AT, nullable=False),
        sa.Column("recorded_by", sa.String(length=8), nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("crossing_id", name=op.f("pk_crossings")),
    )
    op.create_index("ix_crossings_vehicle_crossed_at", "crossings", ["vehicle", "crossed_at"], unique=False)
    op.create_index(
        "ix_crossings_control_point_crossed_at", "crossings", ["control_point", "crossed_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_crossings_control_point_crossed_at", table_name="crossings")
    op.drop_index("ix_crossings_vehicle_crossed_at", table_name="crossings")
    op.drop_table("crossings")
