"""Alembic environment: always run with a connection handed in by :mod:`storage.migrate`."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from storage.schema import metadata

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    msg = "run migrations through storage.migrate (onecard db upgrade), not the alembic CLI"
    raise RuntimeError(msg)  # noqa: TRY004

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
