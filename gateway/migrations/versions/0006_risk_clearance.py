"""risk and clearance: profiles, targets, profiling results, offences, kiosk decisions, inspections,
transhipments

Revision ID: 0006_risk_clearance
Revises: 0005_pin_lockout
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

import gateway.tables

revision = "0006_risk_clearance"
down_revision = "0005_pin_lockout"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_AT = gateway.tables.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "risk_profiles",
        sa.Column("profile_id", _ID, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=60), nullable=False),
        sa.Column("live_name", sa.String(length=60), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column("conditions", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("updated_at", _AT, nullable=False),
        sa.PrimaryKeyConstraint("profile_id", name=op.f("pk_risk_profiles")),
        sa.UniqueConstraint("live_name", name=op.f("uq_risk_profiles_live_name")),
    )
    op.create_table(
        "risk_profile_versions",
        sa.Column("profile_id", _ID, autoincrement=False, nullable=False),
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("name", sa.String(length=60), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column("conditions", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("at", _AT, nullable=False),
        sa.Column("actor", sa.String(length=8), nullable=True),
        sa.ForeignKeyConstraint(
            ["profile_id"],
            ["risk_profiles.profile_id"],
            name=op.f("fk_risk_profile_versions_profile_id_risk_profiles"),
        ),
        sa.PrimaryKeyConstraint("profile_id", "version", name=op.f("pk_risk_profile_versions")),
    )
    op.create_table(
        "risk_targets",
        sa.Column("target_id", _ID, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("value", sa.String(length=12), nullable=False),
        sa.Column("action", sa.String(length=8), nullable=False),
        sa.Column("profile_id", sa.BigInteger(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("expires_at", _AT, nullable=False),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("created_by", sa.String(length=8), nullable=True),
        sa.Column("revoked_at", _AT, nullable=True),
        sa.PrimaryKeyConstraint("target_id", name=op.f("pk_risk_targets")),
    )
    op.create_index("ix_risk_targets_kind_value", "risk_targets", ["kind", "value"], unique=False)
    op.create_table(
        "risk_results",
        sa.Column("ccrn", sa.String(length=12), nullable=False),
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("profiled_at", _AT, nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("vehicle", sa.String(length=8), nullable=True),
        sa.Column("draw", sa.Float(), nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("hits", sa.Text(), nullable=False),
        sa.Column("targets", sa.Text(), nullable=False),
        sa.Column("selected", sa.Boolean(), nullable=False),
        sa.Column("why", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["ccrn"], ["consignments.ccrn"], name=op.f("fk_risk_results_ccrn_consignments")
        ),
        sa.PrimaryKeyConstraint("ccrn", "version", name=op.f("pk_risk_results")),
    )
    op.create_table(
        "offences",
        sa.Column("offence_id", _ID, autoincrement=True, nullable=False),
        sa.Column("at", _AT, nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("party_id", sa.String(length=8), nullable=True),
        sa.Column("vehicle", sa.String(length=8), nullable=True),
        sa.Column("ccrn", sa.String(length=12), nullable=True),
        sa.Column("bundle_id", sa.String(length=12), nullable=True),
        sa.Column("control_point", sa.String(length=5), nullable=True),
        sa.Column("details", sa.Text(), nullable=True),
        sa.Column("recorded_by", sa.String(length=8), nullable=True),
        sa.PrimaryKeyConstraint("offence_id", name=op.f("pk_offences")),
    )
    op.create_index(op.f("ix_offences_party_id"), "offences", ["party_id"], unique=False)
    op.create_index(op.f("ix_offences_vehicle"), "offences", ["vehicle"], unique=False)
    op.create_table(
        "clearances",
        sa.Column("clearance_id", _ID, autoincrement=True, nullable=False),
        sa.Column("at", _AT, nullable=False),
        sa.Column("control_point", sa.String(length=5), nullable=False),
        sa.Column("lane", sa.String(length=10), nullable=False),
        sa.Column("vehicle", sa.String(length=8), nullable=False),
        sa.Column("driver_document", sa.String(length=35), nullable=False),
        sa.Column("requested_by", sa.String(length=8), nullable=True),
        sa.Column("bundle_id", sa.String(length=12), nullable=True),
        sa.Column("empty", sa.Boolean(), nullable=False),
        sa.Column("elock_id", sa.String(length=35), nullable=True),
        sa.Column("decision", sa.String(length=10), nullable=False),
        sa.Column("reasons", sa.Text(), nullable=False),
        sa.Column("ccrns", sa.Text(), nullable=False),
        sa.Column("come_back_at", _AT, nullable=True),
        sa.Column("immigration", sa.String(length=12), nullable=True),
        sa.Column("late", sa.Boolean(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("clearance_id", name=op.f("pk_clearances")),
    )
    op.create_index("ix_clearances_vehicle_at", "clearances", ["vehicle", "at"], unique=False)
    op.create_table(
        "inspections",
        sa.Column("inspection_id", _ID, autoincrement=True, nullable=False),
        sa.Column("opened_at", _AT, nullable=False),
        sa.Column("origin", sa.String(length=10), nullable=False),
        sa.Column("clearance_id", sa.BigInteger(), nullable=True),
        sa.Column("control_point", sa.String(length=5), nullable=False),
        sa.Column("vehicle", sa.String(length=8), nullable=True),
        sa.Column("bundle_id", sa.String(length=12), nullable=True),
        sa.Column("empty", sa.Boolean(), nullable=False),
        sa.Column("ccrns", sa.Text(), nullable=False),
        sa.Column("selection", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("closed_at", _AT, nullable=True),
        sa.Column("closed_by", sa.String(length=8), nullable=True),
        sa.Column("findings", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("inspection_id", name=op.f("pk_inspections")),
    )
    op.create_index("ix_inspections_status_opened_at", "inspections", ["status", "opened_at"], unique=False)
    op.create_table(
        "transhipments",
        sa.Column("ccrn", sa.String(length=12), nullable=False),
        sa.Column("mode", sa.String(length=12), nullable=False),
        sa.Column("first_point", sa.String(length=5), nullable=False),
        sa.Column("second_point", sa.String(length=5), nullable=True),
        sa.Column("elock_id", sa.String(length=35), nullable=True),
        sa.Column("first_decision", sa.String(length=10), nullable=False),
        sa.Column("first_at", _AT, nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("second_at", _AT, nullable=True),
        sa.Column("intact", sa.Boolean(), nullable=True),
        sa.ForeignKeyConstraint(
            ["ccrn"], ["consignments.ccrn"], name=op.f("fk_transhipments_ccrn_consignments")
        ),
        sa.PrimaryKeyConstraint("ccrn", name=op.f("pk_transhipments")),
    )
    op.create_index("ix_transhipments_status_first_at", "transhipments", ["status", "first_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_transhipments_status_first_at", table_name="transhipments")
    op.drop_table("transhipments")
    op.drop_index("ix_inspections_status_opened_at", table_name="inspections")
    op.drop_table("inspections")
    op.drop_index("ix_clearances_vehicle_at", table_name="clearances")
    op.drop_table("clearances")
    op.drop_index(op.f("ix_offences_vehicle"), table_name="offences")
    op.drop_index(op.f("ix_offences_party_id"), table_name="offences")
    op.drop_table("offences")
    op.drop_table("risk_results")
    op.drop_index("ix_risk_targets_kind_value", table_name="risk_targets")
    op.drop_table("risk_targets")
    op.drop_table("risk_profile_versions")
    op.drop_table("risk_profiles")
