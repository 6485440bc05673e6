"""The database schema (SQLAlchemy Core). Alembic migrations in ``gateway/migrations`` create it;
a test checks that the migrations and these tables agree."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UtcDateTime(TypeDecorator[datetime]):
    """Aware datetimes stored as UTC: SQLite gives back naive ones, PostgreSQL aware ones."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# An autoincrementing 64-bit key that SQLite also numbers (it only does so for INTEGER PRIMARY KEY).
BigId = BigInteger().with_variant(Integer(), "sqlite")

parties = Table(
    "parties",
    metadata,
    Column("party_id", String(8), primary_key=True),
    Column("role", String(20), nullable=False),
    Column("name", String(140), nullable=False),
    Column("status", String(12), nullable=False),  # ACTIVE, SUSPENDED
    Column("scope", String(20)),
    Column("control_point", String(5)),
    Column("pin_hash", String(128)),
    Column("created_at", UtcDateTime, nullable=False),
    # Wrong PINs in a row, and until when the phone dialog refuses the party (migration 0005).
    Column("pin_failures", Integer, nullable=False, server_default="0"),
    Column("pin_locked_until", UtcDateTime),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", BigId, primary_key=True, autoincrement=True),
    Column("party_id", String(8), ForeignKey("parties.party_id"), nullable=False, index=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("hint", String(12), nullable=False),  # the first characters, to tell keys apart
    Column("created_at", UtcDateTime, nullable=False),
    Column("revoked_at", UtcDateTime),
)

edi_identifiers = Table(
    "edi_identifiers",
    metadata,
    Column("identifier", String(35), primary_key=True),
    Column("party_id", String(8), ForeignKey("parties.party_id"), nullable=False, index=True),
)

raw_messages = Table(
    "raw_messages",
    metadata,
    Column("message_id", BigId, primary_key=True, autoincrement=True),
    Column("received_at", UtcDateTime, nullable=False),
    Column("party_id", String(8)),
    Column("channel", String(10), nullable=False),
    Column("content_type", String(100)),
    Column("sha256", String(64), nullable=False, index=True),
    Column("size", Integer, nullable=False),
    Column("body", LargeBinary, nullable=False),
)

consignments = Table(
    "consignments",
    metadata,
    Column("ccrn", String(12), primary_key=True),
    Column("filer_id", String(8), ForeignKey("parties.party_id"), nullable=False),
    Column("submitter_reference", String(35), nullable=False),
    # The reference while the consignment is live, NULL once cancelled or expired: the unique key
    # below then makes the reference unique per filer among live consignments only.
    Column("live_reference", String(35)),
    Column("direction", String(6), nullable=False),
    Column("control_point", String(5)),
    Column("status", String(12), nullable=False),
    Column("status_version", Integer, nullable=False),
    Column("version", Integer, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("crossing_from", UtcDateTime, nullable=False),
    Column("crossing_to", UtcDateTime, nullable=False),
    Column("lodged_at", UtcDateTime, nullable=False),
    Column("amended_at", UtcDateTime, nullable=False),  # the latest content-changing version
    Column("updated_at", UtcDateTime, nullable=False),
    Column("bundle_id", String(12), index=True),  # the live bundle carrying it (bundling, 0004)
    UniqueConstraint("filer_id", "live_reference", name="uq_consignments_live_reference"),
    Index("ix_consignments_status_crossing_to", "status", "crossing_to"),
    Index("ix_consignments_filer_id_lodged_at", "filer_id", "lodged_at"),
)

consignment_versions = Table(
    "consignment_versions",
    metadata,
    Column("ccrn", String(12), ForeignKey("consignments.ccrn"), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("record", Text, nullable=False),  # canonical JSON
    Column("content_hash", String(64), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("channel", String(10), nullable=False),
    Column("raw_message_id", BigId, ForeignKey("raw_messages.message_id")),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("audit_id", BigId, primary_key=True, autoincrement=True),
    Column("at", UtcDateTime, nullable=False),
    Column("actor", String(8)),  # a party id, or NULL for the gateway itself (expiry) and the CLI
    Column("channel", String(10), nullable=False),
    Column("action", String(40), nullable=False),
    Column("entity", String(20), nullable=False),
    Column("entity_id", String(40), nullable=False),
    Column("before", Text),
    Column("after", Text),
    Index("ix_audit_log_entity_entity_id", "entity", "entity_id"),
)

events = Table(
    "events",
    metadata,
    Column("cursor", BigId, primary_key=True, autoincrement=True),
    Column("at", UtcDateTime, nullable=False),
    Column("type", String(30), nullable=False),
    Column("ccrn", String(12), index=True),
    Column("vehicle", String(8)),
    Column("status", String(12)),
    Column("status_version", Integer),
    Column("data", Text, nullable=False),
)

settings = Table(
    "settings",
    metadata,
    Column("name", String(40), primary_key=True),
    Column("value", Text, nullable=False),
)


# Bundling (migration 0004_bundles) -------------------------------------------------------------------

bundles = Table(
    "bundles",
    metadata,
    Column("bundle_id", String(12), primary_key=True),
    Column("vehicle", String(8), nullable=False),
    # The vehicle while the bundle is live, NULL afterwards: at most one live bundle per vehicle.
    Column("live_vehicle", String(8), unique=True),
    Column("control_point", String(5), nullable=False),
    Column("direction", String(6), nullable=False),
    Column("driver_id", String(8), ForeignKey("parties.party_id"), nullable=False),
    Column("created_by", String(8), ForeignKey("parties.party_id"), nullable=False),
    Column("status", String(12), nullable=False),  # LIVE, UNBUNDLED (later: ARRIVED, CROSSED)
    Column("expected_arrival", UtcDateTime),
    Column("earliest_crossing", UtcDateTime, nullable=False),
    Column("slot_start", UtcDateTime, nullable=False),
    Column("slot_end", UtcDateTime, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Index("ix_bundles_vehicle_created_at", "vehicle", "created_at"),
)

bundle_items = Table(
    "bundle_items",
    metadata,
    Column("bundle_id", String(12), ForeignKey("bundles.bundle_id"), primary_key=True),
    Column("ccrn", String(12), ForeignKey("consignments.ccrn"), primary_key=True),
    Column("position", Integer, nullable=False),  # the order the driver gave
    Column("added_at", UtcDateTime, nullable=False),
    Column("removed_at", UtcDateTime),
)

slot_bookings = Table(
    "slot_bookings",
    metadata,
    Column("control_point", String(5), primary_key=True),
    Column("slot_start", UtcDateTime, primary_key=True),
    Column("booked", Integer, nullable=False),
)
