"""Alembic's entry point for the state database's migrations.

Runs on the connection that :func:`ls_space_sync.store.state.upgrade_schema` passes in
``config.attributes["connection"]``, inside that caller's transaction (which holds the upgrade
lock): Alembic commits nothing itself, so an upgrade that fails leaves the old schema.
"""

from alembic import context

from ls_space_sync.store.state import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("the state database migrates through ls_space_sync.store.state.upgrade_schema or "
                       "alembic_config(connection); offline (--sql) mode is not supported")


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Compare only this package's tables: APScheduler's job store may share the database."""
    return type_ != "table" or name in Base.metadata.tables


# render_as_batch: drafts made by autogenerate alter tables the way SQLite can (a copy of the table).
context.configure(connection=connection, target_metadata=Base.metadata, include_name=include_name,
                  render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
