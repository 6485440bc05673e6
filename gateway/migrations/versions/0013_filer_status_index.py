"""consignments: index (filer_id, status) so that risk's "first-time filer" check is one index probe
instead of a read of all the filer's consignments

Revision ID: 0013_filer_status_index
Revises: 0012_workers
Create Date: 2026-11-26
"""

from alembic import op

revision = "0013_filer_status_index"
down_revision = "0012_workers"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_consignments_filer_id_status", "consignments", ["filer_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_consignments_filer_id_status", table_name="consignments")
