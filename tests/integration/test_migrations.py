from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

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
