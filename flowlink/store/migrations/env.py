"""Alembic environment: migrations run on the connection handed in by flowlink."""

from alembic import context

from flowlink.store.models import Base

config = context.config
target_metadata = Base.metadata

connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("flowlink migrations run through flowlink.store.engine.migrate()")
context.configure(
    connection=connection,
    target_metadata=target_metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
context.run_migrations()
