"""Alembic migrations of the state database, applied by :func:`ls_space_sync.store.state.upgrade_schema`
when :class:`~ls_space_sync.store.state.StateDB` opens it; configured in code, so no ``alembic.ini``.

To change a table: edit its class in ``store/state.py``, add the next revision (ids are
``0001``, ``0002``, ...) and set ``SCHEMA_REVISION`` there to it. Alembic can draft the revision
from a database at the previous head::

    from alembic import command
    from ls_space_sync.store.state import StateDB, alembic_config
    db = StateDB("sqlite:////tmp/draft.db")
    with db.engine.begin() as conn:
        command.revision(alembic_config(conn), "what changes", rev_id="0003", autogenerate=True)

Then read the draft: SQLite alters tables through ``op.batch_alter_table`` (a copy of the
table), and a revision must keep every row.
"""
