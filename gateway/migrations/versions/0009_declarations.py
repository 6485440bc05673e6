"""declarations: trade declarations and their write-off ledger

Revision ID: 0009_declarations
Revises: 0008_portal
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

import gateway.tables

revision = "0009_declarations"
down_revision = "0008_portal"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_AT = gateway.tables.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "declaration_grants",
        sa.Column("ccrn", sa.String(length=12), nullable=False),
        sa.Column("party_id", sa.String(length=8), nullable=False),
        sa.Column("granted_by", sa.String(length=8), nullable=False),
        sa.Column("granted_at", _AT, nullable=False),
        sa.ForeignKeyConstraint(
            ["ccrn"], ["consignments.ccrn"], name=op.f("fk_declaration_grants_ccrn_consignments")
        ),
        sa.ForeignKeyConstraint(
            ["party_id"], ["parties.party_id"], name=op.f("fk_declaration_grants_party_id_parties")
        ),
        sa.PrimaryKeyConstraint("ccrn", "party_id", name=op.f("pk_declaration_grants")),
    )
    op.create_index("ix_declaration_grants_party_id", "declaration_grants", ["party_id"], unique=False)
    op.create_table(
        "declaration_ledger",
        sa.Column("ccrn", sa.String(length=12), nullable=False),
        sa.Column("item", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("packages", sa.BigInteger(), nullable=False),
        sa.Column("packages_declared", sa.BigInteger(), nullable=False),
        sa.Column("mass_g", sa.BigInteger(), nullable=True),
        sa.Column("mass_declared_g", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["ccrn"], ["consignments.ccrn"], name=op.f("fk_declaration_ledger_ccrn_consignments")
        ),
        sa.PrimaryKeyConstraint("ccrn", "item", name=op.f("pk_declaration_ledger")),
    )
    op.create_table(
        "declarations",
        sa.Column("declaration_number", sa.String(length=16), nullable=False),
        sa.Column("ccrn", sa.String(length=12), nullable=False),
        sa.Column("kind", sa.String(length=6), nullable=False),
        sa.Column("declarant_id", sa.String(length=8), nullable=False),
        sa.Column("channel", sa.String(length=10), nullable=False),
        sa.Column("lodged_at", _AT, nullable=False),
        sa.Column("packages", sa.BigInteger(), nullable=False),
        sa.Column("mass_g", sa.BigInteger(), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("raw_message_id", _ID, nullable=True),
        sa.ForeignKeyConstraint(
            ["ccrn"], ["consignments.ccrn"], name=op.f("fk_declarations_ccrn_consignments")
        ),
        sa.ForeignKeyConstraint(
            ["declarant_id"], ["parties.party_id"], name=op.f("fk_declarations_declarant_id_parties")
        ),
        sa.ForeignKeyConstraint(
            ["raw_message_id"],
            ["raw_messages.message_id"],
            name=op.f("fk_declarations_raw_message_id_raw_messages"),
        ),
        sa.PrimaryKeyConstraint("declaration_number", name=op.f("pk_declarations")),
    )
    op.create_index(op.f("ix_declarations_ccrn"), "declarations", ["ccrn"], unique=False)
    op.create_index(op.f("ix_declarations_declarant_id"), "declarations", ["declarant_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_declarations_declarant_id"), table_name="declarations")
    op.drop_index(op.f("ix_declarations_ccrn"), table_name="declarations")
    op.drop_table("declarations")
    op.drop_table("declaration_ledger")
    op.drop_index("ix_declaration_grants_party_id", table_name="declaration_grants")
    op.drop_table("declaration_grants")
