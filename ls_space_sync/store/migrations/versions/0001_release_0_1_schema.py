"""The schema of release 0.1.0, as its ``Base.metadata.create_all`` made it.

That release had no schema version: every open ran ``create_all``, and the push and mirror
tables appeared only once their modules had been imported. So a database it made holds all of
this schema or part of it, with no ``alembic_version``. Each table is therefore created only if
it is absent: on a new database this revision creates everything; on a 0.1.0 database it adds
what that release had not made yet and adopts the rest as it is.

Revision ID: 0001
Revises:
Create Date: 2026-05-20
"""

from __future__ import annotations

from typing import Callable

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _sync_runs() -> None:
    op.create_table(
        "sync_runs",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("inserted", sa.Integer(), nullable=False),
        sa.Column("updated", sa.Integer(), nullable=False),
        sa.Column("deleted", sa.Integer(), nullable=False),
        sa.Column("full_scan", sa.Boolean(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=True),
        sa.Column("tag", sa.String(64), nullable=True),
        sa.Column("cursor", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("run_id"),
    )
    op.create_index("ix_sync_runs_status", "sync_runs", ["status"])
    op.create_index("ix_sync_runs_project_id", "sync_runs", ["project_id"])


def _project_cursors() -> None:
    op.create_table(
        "project_cursors",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("cursor", sa.DateTime(timezone=True), nullable=True),
        sa.Column("signpost", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_full_scan_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("runs_since_full_scan", sa.Integer(), nullable=False),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("project_id"),
    )


def _push_links() -> None:
    op.create_table(
        "push_links",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("source_project", sa.Integer(), nullable=False),
        sa.Column("source_id", sa.BigInteger(), nullable=False),
        sa.Column("source_created", sa.BigInteger(), nullable=True),
        sa.Column("source_stamp", sa.String(200), nullable=True),
        sa.Column("target_project", sa.Integer(), nullable=False),
        sa.Column("target_id", sa.BigInteger(), nullable=False),
        sa.Column("target_created", sa.BigInteger(), nullable=True),
        sa.Column("target_stamp", sa.String(200), nullable=True),
        sa.Column("content_hash", sa.String(64), nullable=True),
        sa.Column("version", sa.BigInteger(), nullable=True),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("pushed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        # Unnamed, as create_all made it (PostgreSQL names it push_links_source_project_..._key).
        sa.UniqueConstraint("source_project", "source_id", "source_created", "target_project"),
    )
    op.create_index("ix_push_links_target", "push_links", ["target_project", "target_id"])


def _push_runs() -> None:
    op.create_table(
        "push_runs",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("source_project", sa.Integer(), nullable=False),
        sa.Column("target_project", sa.Integer(), nullable=False),
        sa.Column("source_version", sa.BigInteger(), nullable=False),
        sa.Column("new_project", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("run_id"),
    )
    op.create_index("ix_push_runs_source_project", "push_runs", ["source_project"])
    op.create_index("ix_push_runs_target_project", "push_runs", ["target_project"])


def _mirror_targets() -> None:
    op.create_table(
        "mirror_targets",
        sa.Column("source_project", sa.Integer(), nullable=False),
        sa.Column("target_project", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("source_project"),
    )


TABLES: dict[str, Callable[[], None]] = {
    "sync_runs": _sync_runs,
    "project_cursors": _project_cursors,
    "push_links": _push_links,
    "push_runs": _push_runs,
    "mirror_targets": _mirror_targets,
}


def upgrade() -> None:
    present = set(sa.inspect(op.get_bind()).get_table_names())
    for name, create in TABLES.items():
        if name not in present:
            create()


def downgrade() -> None:
    for name in reversed(TABLES):
        op.drop_table(name)
