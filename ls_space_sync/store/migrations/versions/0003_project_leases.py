"""Leases and daemons: the state database coordinates writers and daemons on several hosts.

- ``project_leases``: one row per (scope, project) while a writer holds it (owner, token,
  heartbeat, expiry); see :mod:`ls_space_sync.store.leases`.
- ``daemons``: the live ``ls-space-sync run`` processes sharing one PostgreSQL state (id,
  advertised URL, heartbeat, expiry).

New tables only: nothing existing changes, so the downgrade drops them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "project_leases",
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("token", sa.String(32), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope", "project_id"),
    )
    op.create_table(
        "daemons",
        sa.Column("daemon_id", sa.String(200), nullable=False),
        sa.Column("url", sa.String(500), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("daemon_id"),
    )
    op.create_index("ix_daemons_expires_at", "daemons", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_daemons_expires_at", table_name="daemons")
    op.drop_table("daemons")
    op.drop_table("project_leases")
