"""immigration: the durable outbox of advance notices to Immigration

Revision ID: 0007_immigration
Revises: 0006_risk_clearance
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

import gateway.tables

revision = "0007_immigration"
down_revision = "0006_risk_clearance"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_AT = gateway.tables.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "immigration_outbox",
        sa.Column("notice_id", _ID, autoincrement=True, nullable=False),
        sa.Column("bundle_id", sa.String(length=12), nullable=False),
        sa.Column("vehicle", sa.String(length=8), nullable=False),
        sa.Column("driver_id", sa.String(length=8), nullable=False),
        sa.Column("control_point", sa.String(length=5), nullable=False),
        sa.Column("direction", sa.String(length=6), nullable=False),
        sa.Column("slot_start", _AT, nullable=False),
        sa.Column("slot_end", _AT, nullable=False),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("next_attempt_at", _AT, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("delivered_at", _AT, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["bundle_id"], ["bundles.bundle_id"], name=op.f("fk_immigration_outbox_bundle_id_bundles")
        ),
        sa.PrimaryKeyConstraint("notice_id", name=op.f("pk_immigration_outbox")),
    )
    op.create_index(
        op.f("ix_immigration_outbox_bundle_id"), "immigration_outbox", ["bundle_id"], unique=False
    )
    op.create_index(
        "ix_immigration_outbox_delivered_at_next_attempt_at",
        "immigration_outbox",
        ["delivered_at", "next_attempt_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_immigration_outbox_delivered_at_next_attempt_at", table_name="immigration_outbox")
    op.drop_index(op.f("ix_immigration_outbox_bundle_id"), table_name="immigration_outbox")
    op.drop_table("immigration_outbox")
