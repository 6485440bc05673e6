"""Alembic environment: the engine comes from the caller (``gateway.db.upgrade``), never a file."""

from alembic import context
from sqlalchemy import create_engine

from gateway.tables import metadata

config = context.config
engine = config.attributes.get("engine") or create_engine(config.get_main_option("sqlalchemy.url") or "")

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
