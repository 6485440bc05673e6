"""EDIFACT channel: inbound interchanges and their stored replies

Revision ID: 0002_edifact
Revises: 0001
Create Date: 2026-11-26
"""

from alembic import op
import sqlalchemy as sa
import gateway.tables


revision = "0002_edifact"
down_revision = "0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "edifact_interchanges",
        sa.Column("interchange_id", _ID, autoincrement=True, nullable=False),
        sa.Column("raw_message_id", _ID, nullable=False),
        sa.Column("party_id", sa.String(length=8), nullable=False),
        sa.Column("sender", sa.String(length=35), nullable=False),
        sa.Column("control_reference", sa.String(length=14), nullable=False),
        sa.Column("claim", sa.String(length=14), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("syntax", sa.String(length=6), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("messages", sa.Integer(), nullable=False),
        sa.Column("consignments", sa.Integer(), nullable=False),
        sa.Column("accepted", sa.Integer(), nullable=False),
        sa.Column("received_at", gateway.tables.UtcDateTime(timezone=True), nullable=False),
        sa.Column("completed_at", gateway.tables.UtcDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["party_id"], ["parties.party_id"], name=op.f("fk_edifact_interchanges_party_id_parties")
        ),
        sa.ForeignKeyConstraint(
            ["raw_message_id"],
            ["raw_messages.message_id"],
            name=op.f("fk_edifact_interchanges_raw_message_id_raw_messages"),
        ),
        sa.PrimaryKeyConstraint("interchange_id", name=op.f("pk_edifact_interchanges")),
        sa.UniqueConstraint("sender", "claim", name="uq_edifact_interchanges_sender_claim"),
    )
    with op.batch_alter_table("edifact_interchanges", schema=None) as batch_op:
        batch_op.create_index(
            "ix_edifact_interchanges_sender_control_reference", ["sender", "control_reference"], unique=False
        )
    op.create_table(
        "edifact_replies",
        sa.Column("interchange_id", _ID, nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("control_reference", sa.String(length=14), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", gateway.tables.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["interchange_id"],
            ["edifact_interchanges.interchange_id"],
            name=op.f("fk_edifact_replies_interchange_id_edifact_interchanges"),
        ),
        sa.PrimaryKeyConstraint("interchange_id", "kind", name=op.f("pk_edifact_replies")),
    )


def downgrade() -> None:
    op.drop_table("edifact_replies")
    with op.batch_alter_table("edifact_interchanges", schema=None) as batch_op:
        batch_op.drop_index("ix_edifact_interchanges_sender_control_reference")
    op.drop_table("edifact_interchanges")
