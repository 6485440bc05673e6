"""portal: login sessions, portal passwords and registration applications

Revision ID: 0008_portal
Revises: 0007_immigration
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

import gateway.tables

revision = "0008_portal"
down_revision = "0007_immigration"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_AT = gateway.tables.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "portal_sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("party_id", sa.String(length=8), nullable=False),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("expires_at", _AT, nullable=False),
        sa.ForeignKeyConstraint(
            ["party_id"], ["parties.party_id"], name=op.f("fk_portal_sessions_party_id_parties")
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_portal_sessions")),
    )
    op.create_index(op.f("ix_portal_sessions_party_id"), "portal_sessions", ["party_id"], unique=False)
    op.create_table(
        "portal_passwords",
        sa.Column("party_id", sa.String(length=8), nullable=False),
        sa.Column("salt", sa.String(length=32), nullable=False),
        sa.Column("password_hash", sa.String(length=128), nullable=False),
        sa.Column("set_at", _AT, nullable=False),
        sa.Column("failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("locked_until", _AT, nullable=True),
        sa.ForeignKeyConstraint(
            ["party_id"], ["parties.party_id"], name=op.f("fk_portal_passwords_party_id_parties")
        ),
        sa.PrimaryKeyConstraint("party_id", name=op.f("pk_portal_passwords")),
    )
    op.create_table(
        "registration_applications",
        sa.Column("application_id", _ID, autoincrement=True, nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("name", sa.String(length=140), nullable=False),
        sa.Column("contact", sa.String(length=140), nullable=False),
        sa.Column("business_id", sa.String(length=35), nullable=True),
        sa.Column("channel", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("submitted_at", _AT, nullable=False),
        sa.Column("decided_at", _AT, nullable=True),
        sa.Column("decided_by", sa.String(length=8), nullable=True),
        sa.Column("party_id", sa.String(length=8), nullable=True),
        sa.Column("reason", sa.String(length=350), nullable=True),
        sa.PrimaryKeyConstraint("application_id", name=op.f("pk_registration_applications")),
    )
    op.create_index(
        "ix_registration_applications_status_submitted_at",
        "registration_applications",
        ["status", "submitted_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_registration_applications_status_submitted_at", table_name="registration_applications")
    op.drop_table("registration_applications")
    op.drop_table("portal_passwords")
    op.drop_index(op.f("ix_portal_sessions_party_id"), table_name="portal_sessions")
    op.drop_table("portal_sessions")
