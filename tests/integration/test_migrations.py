from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text

from gateway import db, tables


def test_migrations_build_exactly_the_declared_schema(db_url):
    engine = create_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), tables.metadata)
    engine.dispose()
    assert diff == []


def test_schema_is_current_after_upgrade_and_upgrade_is_repeatable(db_url):
    engine = db.make_engine(db_url)
    assert db.schema_is_current(engine)
    db.upgrade(engine)
    assert db.schema_is_current(engine)
    engine.dispose()


def test_the_outbox_queue_is_vacuumed_after_a_fixed_number_of_changes_on_postgresql(pg_database):
    """Each delivered notice leaves a dead entry where the claim looks until a vacuum: on PostgreSQL the
    outbox is vacuumed after every 200 changed rows, not after a fifth of a table that keeps growing."""
    engine = create_engine(pg_database)
    try:
        with engine.connect() as conn:
            options = conn.scalar(
                text("SELECT reloptions FROM pg_class WHERE relname = 'immigration_outbox'")
            )
    finally:
        engine.dispose()
    assert {"autovacuum_vacuum_scale_factor=0", "autovacuum_vacuum_threshold=200"} <= set(options or [])
