"""The database schema (SQLAlchemy Core). Alembic migrations in ``gateway/migrations`` create it;
a test checks that the migrations and these tables agree."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
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

    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        # SQLite stores the text of SQLAlchemy's DATETIME, "YYYY-MM-DD HH:MM:SS.ffffff", and compares
        # it as text: the same string from one C call instead of a conversion and a %-format (every
        # statement of a bundle binds two or three times).
        def process(value: datetime | None) -> str | None:
            if value is None:
                return None
            if value.tzinfo is None:
                raise ValueError("naive datetime given to the store")
            return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")

        return process

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
    Column("expires_at", UtcDateTime),  # 0011_operations: a key may stop working by itself
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
    Column("received_at", UtcDateTime, nullable=False, index=True),  # index: 0011_operations (retention)
    Column("party_id", String(8)),
    Column("channel", String(10), nullable=False),
    Column("content_type", String(100)),
    Column("sha256", String(64), nullable=False, index=True),
    Column("size", Integer, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("request_id", String(64)),  # 0011_operations: the X-Request-ID it came with
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
    Index("ix_consignments_filer_id_status", "filer_id", "status"),  # risk: has this filer crossed?
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
    Column("at", UtcDateTime, nullable=False, index=True),  # index: 0011_operations (retention, export)
    Column("actor", String(8)),  # a party id, or NULL for the gateway itself (expiry) and the CLI
    Column("channel", String(10), nullable=False),
    Column("action", String(40), nullable=False),
    Column("entity", String(20), nullable=False),
    Column("entity_id", String(40), nullable=False),
    Column("before", Text),
    Column("after", Text),
    Column("request_id", String(64)),  # 0011_operations: the X-Request-ID of the change
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

# EDIFACT channel
# One row per inbound interchange. ``claim`` is the control reference while the row holds it (the first
# interchange with that sender and reference), NULL for a refused duplicate, so the unique key allows
# one claim per sender and reference and keeps every refused duplicate too.
edifact_interchanges = Table(
    "edifact_interchanges",
    metadata,
    Column("interchange_id", BigId, primary_key=True, autoincrement=True),
    Column("raw_message_id", BigId, ForeignKey("raw_messages.message_id"), nullable=False),
    Column("party_id", String(8), ForeignKey("parties.party_id"), nullable=False),
    Column("sender", String(35), nullable=False),
    Column("control_reference", String(14), nullable=False),
    Column("claim", String(14)),
    Column("sha256", String(64), nullable=False),
    Column("syntax", String(6), nullable=False),  # e.g. UNOC:3
    Column("status", String(12), nullable=False),  # PROCESSING, DONE, REJECTED, DUPLICATE
    Column("messages", Integer, nullable=False, default=0),
    Column("consignments", Integer, nullable=False, default=0),
    Column("accepted", Integer, nullable=False, default=0),
    Column("received_at", UtcDateTime, nullable=False),
    Column("completed_at", UtcDateTime),
    UniqueConstraint("sender", "claim", name="uq_edifact_interchanges_sender_claim"),
    Index("ix_edifact_interchanges_sender_control_reference", "sender", "control_reference"),
)

# The replies to an interchange, stored before they are sent: CONTRL, then CUSRES when any.
edifact_replies = Table(
    "edifact_replies",
    metadata,
    Column("interchange_id", BigId, ForeignKey("edifact_interchanges.interchange_id"), primary_key=True),
    Column("kind", String(8), primary_key=True),  # CONTRL, CUSRES
    Column("control_reference", String(14), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
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

# SFTP channel
# SSH public keys a party logs in to its mailbox with; the fingerprint (OpenSSH SHA256 form) is unique,
# so that one key never opens two parties' mailboxes.
ssh_keys = Table(
    "ssh_keys",
    metadata,
    Column("key_id", BigId, primary_key=True, autoincrement=True),
    Column("party_id", String(8), ForeignKey("parties.party_id"), nullable=False, index=True),
    Column("algorithm", String(40), nullable=False),
    Column("public_key", Text, nullable=False),  # the base64 blob of the OpenSSH public key line
    Column("fingerprint", String(60), nullable=False, unique=True),
    Column("comment", String(200)),
    Column("created_at", UtcDateTime, nullable=False),
    Column("revoked_at", UtcDateTime),
)

# One row per file taken from a mailbox inbox or fetched from a partner's server. Its replies (DONE) or
# the reason it failed (FAILED) are committed before anything is written to the outbox, and ``filed_at``
# is set once the input has left the inbox: a crash in between writes the same replies again.
sftp_files = Table(
    "sftp_files",
    metadata,
    Column("file_id", BigId, primary_key=True, autoincrement=True),
    Column("party_id", String(8), ForeignKey("parties.party_id"), nullable=False),
    Column("source", String(110), nullable=False),  # "mailbox" or "pull:NAME"
    Column("name", String(255), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("status", String(12), nullable=False),  # PROCESSING, DONE, FAILED, ABORTED
    Column("attempts", Integer, nullable=False),
    Column("error", Text),
    Column("started_at", UtcDateTime, nullable=False),
    Column("completed_at", UtcDateTime),
    Column("filed_at", UtcDateTime),
    Index("ix_sftp_files_party_id_source_name", "party_id", "source", "name"),
)

sftp_replies = Table(
    "sftp_replies",
    metadata,
    Column("file_id", BigId, ForeignKey("sftp_files.file_id"), primary_key=True),
    Column("suffix", String(20), primary_key=True),  # .contrl.edi, .cusres.edi, .ack.xml
    Column("body", LargeBinary, nullable=False),
)

# The health of each polled partner server, shared with `roadcargo sftp status` in another process.
sftp_pull_status = Table(
    "sftp_pull_status",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("party_id", String(8), nullable=False),
    Column("last_attempt_at", UtcDateTime),
    Column("last_success_at", UtcDateTime),
    Column("last_error_at", UtcDateTime),
    Column("last_error", Text),
    Column("consecutive_failures", Integer, nullable=False),
    Column("files_fetched", BigInteger, nullable=False),
)

# SFTP work claimed across gateway processes (migration 0010_sftp_claims): one row per mailbox
# ("mailbox", PARTY) or polled partner ("pull:NAME", PARTY) that a process is working on. The claimant
# renews ``lease_until`` while it works; a claim whose lease has run out (its process died) is taken over.
sftp_claims = Table(
    "sftp_claims",
    metadata,
    Column("source", String(110), primary_key=True),
    Column("party_id", String(8), primary_key=True),
    Column("owner", String(200), nullable=False),  # host, pid and a token of the claiming process
    Column("file_name", String(255)),  # the file at work, for status
    Column("claimed_at", UtcDateTime, nullable=False),
    Column("lease_until", UtcDateTime, nullable=False),
)

# Risk and clearance (migration 0006_risk_clearance) --------------------------------------------------

# A risk profile as it stands now; every version of it is kept in risk_profile_versions. ``live_name``
# is the name while the profile is active, NULL once retired: names are unique among active profiles.
risk_profiles = Table(
    "risk_profiles",
    metadata,
    Column("profile_id", BigId, primary_key=True, autoincrement=True),
    Column("name", String(60), nullable=False),
    Column("live_name", String(60), unique=True),
    Column("version", Integer, nullable=False),
    Column("weight", Integer, nullable=False),
    Column("conditions", Text, nullable=False),  # JSON list of {field, op, values}
    Column("status", String(10), nullable=False),  # ACTIVE, RETIRED
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

risk_profile_versions = Table(
    "risk_profile_versions",
    metadata,
    Column(
        "profile_id", BigId, ForeignKey("risk_profiles.profile_id"), primary_key=True, autoincrement=False
    ),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", String(60), nullable=False),
    Column("weight", Integer, nullable=False),
    Column("conditions", Text, nullable=False),
    Column("status", String(10), nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Column("actor", String(8)),
)

# A CCRN, vehicle or party marked for inspection, or released from a profile's selection (all profiles'
# and the random draw's when ``profile_id`` is NULL), until it expires or is revoked.
risk_targets = Table(
    "risk_targets",
    metadata,
    Column("target_id", BigId, primary_key=True, autoincrement=True),
    Column("kind", String(8), nullable=False),  # CCRN, VEHICLE, PARTY
    Column("value", String(12), nullable=False),
    Column("action", String(8), nullable=False),  # INSPECT, RELEASE
    Column("profile_id", BigInteger),
    Column("reason", Text, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("created_by", String(8)),
    Column("revoked_at", UtcDateTime),
    Index("ix_risk_targets_kind_value", "kind", "value"),
)

# The latest profiling of each consignment version: the draw, the score, the profiles that hit, the
# targets that applied, and why it was (not) selected. Officers only.
risk_results = Table(
    "risk_results",
    metadata,
    Column("ccrn", String(12), ForeignKey("consignments.ccrn"), primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("profiled_at", UtcDateTime, nullable=False),
    Column("trigger", String(16), nullable=False),  # LODGE, AMEND, BUNDLE, PROFILE, KIOSK
    Column("vehicle", String(8)),
    Column("draw", Float, nullable=False),
    Column("score", Integer, nullable=False),
    Column("hits", Text, nullable=False),
    Column("targets", Text, nullable=False),
    Column("selected", Boolean, nullable=False),
    Column("why", Text, nullable=False),
)

offences = Table(
    "offences",
    metadata,
    Column("offence_id", BigId, primary_key=True, autoincrement=True),
    Column("at", UtcDateTime, nullable=False),
    Column("kind", String(20), nullable=False),
    Column("party_id", String(8), index=True),
    Column("vehicle", String(8), index=True),
    Column("ccrn", String(12)),
    Column("bundle_id", String(12)),
    Column("control_point", String(5)),
    Column("details", Text),
    Column("recorded_by", String(8)),  # the officer, or NULL when the gateway saw it itself
)

# One row per kiosk request and its decision. ``reasons`` are the generic ones the kiosk was given;
# ``detail`` is the officers' view (profiles, targets, draws) and never leaves customs.
clearances = Table(
    "clearances",
    metadata,
    Column("clearance_id", BigId, primary_key=True, autoincrement=True),
    Column("at", UtcDateTime, nullable=False),
    Column("control_point", String(5), nullable=False),
    Column("lane", String(10), nullable=False),
    Column("vehicle", String(8), nullable=False),
    Column("driver_document", String(35), nullable=False),
    Column("requested_by", String(8)),
    Column("bundle_id", String(12)),
    Column("empty", Boolean, nullable=False),
    Column("elock_id", String(35)),
    Column("decision", String(10), nullable=False),
    Column("reasons", Text, nullable=False),
    Column("ccrns", Text, nullable=False),
    Column("come_back_at", UtcDateTime),
    Column("immigration", String(12)),
    Column("late", Boolean, nullable=False),
    Column("detail", Text, nullable=False),
    Index("ix_clearances_vehicle_at", "vehicle", "at"),
)

inspections = Table(
    "inspections",
    metadata,
    Column("inspection_id", BigId, primary_key=True, autoincrement=True),
    Column("opened_at", UtcDateTime, nullable=False),
    Column("origin", String(10), nullable=False),  # KIOSK, ELOCK
    Column("clearance_id", BigInteger),
    Column("control_point", String(5), nullable=False),
    Column("vehicle", String(8)),
    Column("bundle_id", String(12)),
    Column("empty", Boolean, nullable=False),
    Column("ccrns", Text, nullable=False),
    Column("selection", Text, nullable=False),  # officers' view of why
    Column("status", String(10), nullable=False),  # OPEN, RELEASED, HELD
    Column("closed_at", UtcDateTime),
    Column("closed_by", String(8)),
    Column("findings", Text),
    Index("ix_inspections_status_opened_at", "status", "opened_at"),
)

# Intermodal transhipment (design section 5): the first control point's record and e-lock, then the
# second's confirmation.
transhipments = Table(
    "transhipments",
    metadata,
    Column("ccrn", String(12), ForeignKey("consignments.ccrn"), primary_key=True),
    Column("mode", String(12), nullable=False),  # LAND_TO_AIR, AIR_TO_LAND
    Column("first_point", String(5), nullable=False),
    Column("second_point", String(5)),  # a land control point not yet known: NULL
    Column("elock_id", String(35)),
    Column("first_decision", String(10), nullable=False),  # RELEASED, INSPECTED
    Column("first_at", UtcDateTime, nullable=False),
    Column("status", String(12), nullable=False),  # IN_TRANSIT, CONFIRMED, INSPECTION
    Column("second_at", UtcDateTime),
    Column("intact", Boolean),
    Index("ix_transhipments_status_first_at", "status", "first_at"),
)

# Immigration and agencies (migration 0007_immigration) -----------------------------------------------
# The durable outbox of advance notices to Immigration: written in the bundle's transaction, delivered by
# a background worker (gateway/advance_notices.py); ``next_attempt_at`` is also the claim's lease.
immigration_outbox = Table(
    "immigration_outbox",
    metadata,
    Column("notice_id", BigId, primary_key=True, autoincrement=True),
    Column("bundle_id", String(12), ForeignKey("bundles.bundle_id"), nullable=False, index=True),
    Column("vehicle", String(8), nullable=False),
    Column("driver_id", String(8), nullable=False),
    Column("control_point", String(5), nullable=False),
    Column("direction", String(6), nullable=False),
    Column("slot_start", UtcDateTime, nullable=False),
    Column("slot_end", UtcDateTime, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("next_attempt_at", UtcDateTime, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("delivered_at", UtcDateTime),
    Column("last_error", Text),
    Index("ix_immigration_outbox_delivered_at_next_attempt_at", "delivered_at", "next_attempt_at"),
)

# Portal (migration 0008_portal) ----------------------------------------------------------------------
# A login session of the web portal. The cookie holds a random token; only its SHA-256 is stored, so a
# copy of the database opens no session. Logging out deletes the row.
portal_sessions = Table(
    "portal_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("party_id", String(8), ForeignKey("parties.party_id"), nullable=False, index=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    # 0011_operations: the API key that opened the session (NULL: a password); revoking it ends it
    Column("key_id", BigInteger, index=True),
)

# A password a party sets for the portal (scrypt with a random salt), as an alternative to its API key.
portal_passwords = Table(
    "portal_passwords",
    metadata,
    Column("party_id", String(8), ForeignKey("parties.party_id"), primary_key=True),
    Column("salt", String(32), nullable=False),
    Column("password_hash", String(128), nullable=False),
    Column("set_at", UtcDateTime, nullable=False),
    # Wrong passwords in a row, and until when password logins are refused (the API key still works).
    Column("failures", Integer, nullable=False, server_default="0"),
    Column("locked_until", UtcDateTime),
)

# An application to register as a party, made by anyone (portal or API) and decided by an officer.
registration_applications = Table(
    "registration_applications",
    metadata,
    Column("application_id", BigId, primary_key=True, autoincrement=True),
    Column("role", String(20), nullable=False),
    Column("name", String(140), nullable=False),
    Column("contact", String(140), nullable=False),
    Column("business_id", String(35)),
    Column("channel", String(10), nullable=False),
    Column("status", String(10), nullable=False),  # PENDING, APPROVED, REJECTED
    Column("submitted_at", UtcDateTime, nullable=False),
    Column("decided_at", UtcDateTime),
    Column("decided_by", String(8)),
    Column("party_id", String(8)),
    Column("reason", String(350)),
    Index("ix_registration_applications_status_submitted_at", "status", "submitted_at"),
)

# Contingency crossings (migration 0012_workers) -------------------------------------------
# A crossing an officer cleared by hand while the control point was in contingency, recorded afterwards
# (``POST /api/v1/crossings``). The consignments' own crossing (status CROSSED, the CROSSED events) is
# written exactly as the kiosk path writes it; this row keeps who recorded it, when, and the notes.
crossings = Table(
    "crossings",
    metadata,
    Column("crossing_id", BigId, primary_key=True, autoincrement=True),
    Column("control_point", String(5), nullable=False),
    Column("lane", String(10)),
    Column("vehicle", String(8), nullable=False),
    Column("bundle_id", String(12)),
    Column("ccrns", Text, nullable=False),  # JSON list, sorted
    Column("crossed_at", UtcDateTime, nullable=False),
    Column("recorded_at", UtcDateTime, nullable=False),
    Column("recorded_by", String(8)),
    Column("notes", Text),
    Index("ix_crossings_vehicle_crossed_at", "vehicle", "crossed_at"),
    Index("ix_crossings_control_point_crossed_at", "control_point", "crossed_at"),
)

# Declarations (migration 0009_declarations) ----------------------------------------------------------
# A filer lets another party (its declaration agent) read a consignment's prefilled declaration and
# lodge declarations against it.
declaration_grants = Table(
    "declaration_grants",
    metadata,
    Column("ccrn", String(12), ForeignKey("consignments.ccrn"), primary_key=True),
    Column("party_id", String(8), ForeignKey("parties.party_id"), primary_key=True),
    Column("granted_by", String(8), nullable=False),
    Column("granted_at", UtcDateTime, nullable=False),
    Index("ix_declaration_grants_party_id", "party_id"),
)

# The write-off ledger: per goods item of the crossed record, what it holds and what has been declared
# so far. Made at the first declaration; every declaration locks its rows (FOR UPDATE) before writing
# off, so concurrent declarations never declare more than the record holds. Masses are in grams.
declaration_ledger = Table(
    "declaration_ledger",
    metadata,
    Column("ccrn", String(12), ForeignKey("consignments.ccrn"), primary_key=True),
    Column("item", Integer, primary_key=True, autoincrement=False),  # 1-based goods item number
    Column("packages", BigInteger, nullable=False),
    Column("packages_declared", BigInteger, nullable=False),
    Column("mass_g", BigInteger),  # NULL: the record gives no gross mass for the item
    Column("mass_declared_g", BigInteger, nullable=False),
)

# One row per lodged declaration; ``document`` is the completed declaration as canonical JSON.
declarations = Table(
    "declarations",
    metadata,
    Column("declaration_number", String(16), primary_key=True),
    Column("ccrn", String(12), ForeignKey("consignments.ccrn"), nullable=False, index=True),
    Column("kind", String(6), nullable=False),  # IMPORT, EXPORT
    Column("declarant_id", String(8), ForeignKey("parties.party_id"), nullable=False, index=True),
    Column("channel", String(10), nullable=False),
    Column("lodged_at", UtcDateTime, nullable=False),
    Column("packages", BigInteger, nullable=False),
    Column("mass_g", BigInteger, nullable=False),
    Column("document", Text, nullable=False),
    Column("raw_message_id", BigId, ForeignKey("raw_messages.message_id")),
)
