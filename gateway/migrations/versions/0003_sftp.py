"""SFTP channel: SSH keys of parties, processed files with their stored replies, pull partner health

Revision ID: 0003_sftp
Revises: 0002_edifact
Create Date: 2026-11-26
"""

from alembic import op
import sqlalchemy as sa
import gateway.tables


revision = "0003_sftp"
down_revision = "0002_edifact"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_AT = gateway.tables.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "ssh_keys",
        sa.Column("key_id", _ID, autoincrement=True, nullable=False),
        sa.Column("party_id", sa.String(length=8), nullable=False),
        sa.Column("algorithm", sa.String(length=40), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(length=60), nullable=False),
        sa.Column("comment", sa.String(length=200), nullable=True),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("revoked_at", _AT, nullable=True),
        sa.ForeignKeyConstraint(["party_id"], ["parties.party_id"], name=op.f("fk_ssh_keys_party_id_parties")),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_ssh_keys")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_ssh_keys_fingerprint")),
    )
    with op.batch_alter_table("ssh_keys", schema=None) as batch_op:
        batch_op.create_index("ix_ssh_keys_party_id", ["party_id"], unique=False)

    op.create_table(
        "sftp_files",
        sa.Column("file_id", _ID, autoincrement=True, nullable=False),
        sa.Column("party_id", sa.String(length=8), nullable=False),
        sa.Column("source", sa.String(length=110), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", _AT, nullable=False),
        sa.Column("completed_at", _AT, nullable=True),
        sa.Column("filed_at", _AT, nullable=True),
        sa.ForeignKeyConstraint(
            ["party_id"], ["parties.party_id"], name=op.f("fk_sftp_files_party_id_parties")
        ),
        sa.PrimaryKeyConstraint("file_id", name=op.f("pk_sftp_files")),
    )
    with op.batch_alter_table("sftp_files", schema=None) as batch_op:
        batch_op.create_index("ix_sftp_files_party_id_source_name", ["party_id", "source", "name"], unique=False)

    op.create_table(
        "sftp_replies",
        sa.Column("file_id", _ID, nullable=False),
        sa.Column("suffix", sa.String(length=20), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["file_id"], ["sftp_files.file_id"], name=op.f("fk_sftp_replies_file_id_sftp_files")
        ),
        sa.PrimaryKeyConstraint("file_id", "suffix", name=op.f("pk_sftp_replies")),
    )

    op.create_table(
        "sftp_pull_status",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("party_id", sa.String(length=8), nullable=False),
        sa.Column("last_attempt_at", _AT, nullable=True),
        sa.Column("last_success_at", _AT, nullable=True),
        sa.Column("last_error_at", _AT, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("files_fetched", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_sftp_pull_status")),
    )


def downgrade() -> None:
    op.drop_table("sftp_pull_status")
    op.drop_table("sftp_replies")
    with op.batch_alter_table("sftp_files", schema=None) as batch_op:
        batch_op.drop_index("ix_sftp_files_party_id_source_name")
    op.drop_table("sftp_files")
    with op.batch_alter_table("ssh_keys", schema=None) as batch_op:
        batch_op.drop_index("ix_ssh_keys_party_id")
    op.drop_table("ssh_keys")
