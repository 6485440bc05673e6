"""sftp: files claimed by one process at a time

Revision ID: 0010_sftp_claims
Revises: 0009_declarations
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

import gateway.tables

revision = "0010_sftp_claims"
down_revision = "0009_declarations"
branch_labels = None
depends_on = None

_AT = gateway.tables.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sftp_claims",
        sa.Column("source", sa.String(length=110), nullable=False),
        sa.Column("party_id", sa.String(length=8), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("file_name", sa.String(length=255), nullable=True),
        sa.Column("claimed_at", _AT, nullable=False),
        sa.Column("lease_until", _AT, nullable=False),
        sa.PrimaryKeyConstraint("source", "party_id", name=op.f("pk_sftp_claims")),
    )


def downgrade() -> None:
    op.drop_table("sftp_claims")
