"""One name per thing: a run's signpost is ``signpost``, a project's cursor is ``cursor``.

- ``sync_runs.cursor`` -> ``sync_runs.signpost``: the column held the run's signpost (the
  server's clock at its start less the lag), which the project's cursor moves to only if it is
  higher.
- ``project_cursors.signpost`` dropped: it was written with the last run's signpost and never
  read; that value is the last run's ``sync_runs.signpost``, and the checkpoint is ``cursor``.

On SQLite both go through ``batch_alter_table`` (the table is copied; rows and indexes kept),
which works on every SQLite, not only on those with ``ALTER TABLE ... DROP COLUMN`` (3.35).

Revision ID: 0002
Revises: 0001
Create Date: 2026-05-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sync_runs") as batch:
        batch.alter_column("cursor", new_column_name="signpost", existing_type=sa.DateTime(timezone=True),
                           existing_nullable=True)
    with op.batch_alter_table("project_cursors") as batch:
        batch.drop_column("signpost")


def downgrade() -> None:
    with op.batch_alter_table("project_cursors") as batch:
        batch.add_column(sa.Column("signpost", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE project_cursors SET signpost = cursor")  # the closest value 0.1.0 would have had
    with op.batch_alter_table("sync_runs") as batch:
        batch.alter_column("signpost", new_column_name="cursor", existing_type=sa.DateTime(timezone=True),
                           existing_nullable=True)
