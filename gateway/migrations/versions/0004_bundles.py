"""bundling: bundles, their items, slot bookings; consignments.bundle_id

Revision ID: 0004_bundles
Revises: 0003_sftp
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

import gateway.tables

revision = "0004_bundles"
down_revision = "0003_sftp"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bundles",
        sa.Column("bundle_id", sa.String(length=12), nullable=False),
        sa.Column("vehicle", sa.String(length=8), nullable=False),
        sa.Column("live_vehicle", sa.String(length=8), nullable=True),
        sa.Column("control_point", sa.String(length=5), nullable=False),
        sa.Column("direction", sa.String(length=6), nullable=False),
        sa.Column("driver_id", sa.String(length=8), nullable=False),
        sa.Column("created_by", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("expected_arrival", gateway.tables.UtcDateTime(timezone=True), nullable=True),
        sa.Column("earliest_crossing", gateway.tables.UtcDateTime(timezone=True), nullable=False),
        sa.Column("slot_start", gateway.tables.UtcDateTime(timezone=True), nullable=False),
        sa.Column("slot_end", gateway.tables.UtcDateTime(timezone=True), nullable=False),
        sa.Column("created_at", gateway.tables.UtcDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", gateway.tables.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["created_by"], ["parties.party_id"], name=op.f("fk_bundles_created_by_parties")),
        sa.ForeignKeyConstraint(["driver_id"], ["parties.party_id"], name=op.f("fk_bundles_driver_id_parties")),
        sa.PrimaryKeyConstraint("bundle_id", name=op.f("pk_bundles")),
        sa.UniqueConstraint("live_vehicle", name=op.f("uq_bundles_live_vehicle")),
    )
    op.create_index("ix_bundles_vehicle_created_at", "bundles", ["vehicle", "created_at"], unique=False)
    op.create_table(
        "bundle_items",
        sa.Column("bundle_id", sa.String(length=12), nullable=False),
        sa.Column("ccrn", sa.String(length=12), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("added_at", gateway.tables.UtcDateTime(timezone=True), nullable=False),
        sa.Column("removed_at", gateway.tables.UtcDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["bundle_id"], ["bundles.bundle_id"], name=op.f("fk_bundle_items_bundle_id_bundles")
        ),
        sa.ForeignKeyConstraint(["ccrn"], ["consignments.ccrn"], name=op.f("fk_bundle_items_ccrn_consignments")),
        sa.PrimaryKeyConstraint("bundle_id", "ccrn", name=op.f("pk_bundle_items")),
    )
    op.create_table(
        "slot_bookings",
        sa.Column("control_point", sa.String(length=5), nullable=False),
        sa.Column("slot_start", gateway.tables.UtcDateTime(timezone=True), nullable=False),
        sa.Column("booked", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("control_point", "slot_start", name=op.f("pk_slot_bookings")),
    )
    with op.batch_alter_table("consignments") as batch:
        batch.add_column(sa.Column("bundle_id", sa.String(length=12), nullable=True))
        batch.create_index(batch.f("ix_consignments_bundle_id"), ["bundle_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("consignments") as batch:
        batch.drop_index(batch.f("ix_consignments_bundle_id"))
        batch.drop_column("bundle_id")
    op.drop_table("slot_bookings")
    op.drop_table("bundle_items")
    op.drop_index("ix_bundles_vehicle_created_at", table_name="bundles")
    op.drop_table("bundles")
