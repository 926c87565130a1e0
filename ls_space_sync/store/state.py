"""Sync state in SQL (SQLAlchemy 2): runs, cursors, push id maps.

SQLite file by default; any SQLAlchemy URL works (``postgresql+psycopg2://...``). Tables are created
on first use. All times are stored and returned as aware UTC datetimes.

The dataset itself is the source of truth for what is stored (each version carries its run's
``run_id`` and cursor); these tables are the checkpoint and the history that a person or the
daemon reads.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Integer,
    String,
    Text,
    TypeDecorator,
    create_engine,
    func,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


class UTCDateTime(TypeDecorator):
    """A timestamp stored as UTC and returned aware, on SQLite (no zones) and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the state database; pass an aware UTC time")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    pass


RUNNING, SUCCEEDED, FAILED, SKIPPED = "running", "succeeded", "failed", "skipped"


class SyncRun(Base):
    """One run of ``run_once`` for one project (pull), or of a push."""

    __tablename__ = "sync_runs"
    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[int] = mapped_column(Integer, index=True)
    seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16), default="pull")
    trigger: Mapped[str] = mapped_column(String(32), default="manual")
    status: Mapped[str] = mapped_column(String(16), default=RUNNING, index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    inserted: Mapped[int] = mapped_column(Integer, default=0)
    updated: Mapped[int] = mapped_column(Integer, default=0)
    deleted: Mapped[int] = mapped_column(Integer, default=0)
    full_scan: Mapped[bool] = mapped_column(Boolean, default=False)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    tag: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cursor: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)

    @property
    def duration_seconds(self) -> float | None:
        """Wall time of the run in seconds, or ``None`` while it runs."""
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


class ProjectCursor(Base):
    """Per project: the cursor (``updated_at`` high-water mark) and full-scan bookkeeping."""

    __tablename__ = "project_cursors"
    project_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cursor: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    signpost: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_full_scan_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    runs_since_full_scan: Mapped[int] = mapped_column(Integer, default=0)
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


@dataclass(frozen=True)
class CursorState:
    """A project's checkpoint as :meth:`StateDB.cursor` returns it (all UTC)."""

    cursor: datetime | None = None
    signpost: datetime | None = None
    last_full_scan_at: datetime | None = None
    runs_since_full_scan: int = 0
    last_success_at: datetime | None = None


def utcnow() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(timezone.utc)


class StateDB:
    """Access to the state database.

    Args:
        url: a SQLAlchemy URL; SQLite files get their folder created.
    """

    def __init__(self, url: str):
        if url.startswith("sqlite:///"):
            from pathlib import Path

            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {"future": True, "pool_pre_ping": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        self.engine: Engine = create_engine(url, **kwargs)
        Base.metadata.create_all(self.engine)
        self.Session = sessionmaker(self.engine, expire_on_commit=False)

    def dispose(self) -> None:
        """Close all pooled connections."""
        self.engine.dispose()

    # --- runs ------------------------------------------------------------------------------

    def start_run(self, project_id: int, *, kind: str = "pull", trigger: str = "manual") -> SyncRun:
        """Record a new running run; its ``seq`` is one more than the project's last (names the tag)."""
        with self.Session.begin() as s:
            last = s.scalar(select(func.max(SyncRun.seq)).where(SyncRun.project_id == project_id, SyncRun.kind == kind))
            now = utcnow()
            run = SyncRun(
                run_id=f"{now:%Y%m%dT%H%M%S}Z-p{project_id}-{uuid.uuid4().hex[:8]}",
                project_id=project_id,
                seq=(last or 0) + 1,
                kind=kind,
                trigger=trigger,
                status=RUNNING,
                started_at=now,
                inserted=0,
                updated=0,
                deleted=0,
                full_scan=False,
                requests=0,
            )
            s.add(run)
        return run

    def finish_run(self, run_id: str, status: str, **fields: Any) -> SyncRun:
        """Mark a run finished with ``status`` and set any :class:`SyncRun` columns given."""
        with self.Session.begin() as s:
            run = s.get(SyncRun, run_id)
            if run is None:
                raise KeyError(run_id)
            run.status = status
            run.finished_at = fields.pop("finished_at", None) or utcnow()
            for key, value in fields.items():
                setattr(run, key, value)
        return run

    def running_runs(self, project_id: int, kind: str = "pull") -> list[SyncRun]:
        """Runs of a project still marked running (their process died if the project lock is free)."""
        with self.Session() as s:
            q = select(SyncRun).where(
                SyncRun.project_id == project_id, SyncRun.kind == kind, SyncRun.status == RUNNING
            )
            return list(s.scalars(q))

    def runs(self, project_id: int | None = None, limit: int = 20, kind: str | None = None) -> list[SyncRun]:
        """The latest runs, newest first."""
        with self.Session() as s:
            q = select(SyncRun).order_by(SyncRun.started_at.desc()).limit(limit)
            if project_id is not None:
                q = q.where(SyncRun.project_id == project_id)
            if kind is not None:
                q = q.where(SyncRun.kind == kind)
            return list(s.scalars(q))

    def last_run(self, project_id: int, status: str | None = None) -> SyncRun | None:
        """The project's latest pull run (with ``status`` if given), or ``None``."""
        with self.Session() as s:
            q = select(SyncRun).where(SyncRun.project_id == project_id, SyncRun.kind == "pull")
            if status:
                q = q.where(SyncRun.status == status)
            return s.scalars(q.order_by(SyncRun.started_at.desc()).limit(1)).first()

    # --- cursors ---------------------------------------------------------------------------

    def cursor(self, project_id: int) -> CursorState:
        """The project's checkpoint (all ``None`` before its first successful run)."""
        with self.Session() as s:
            row = s.get(ProjectCursor, project_id)
            if row is None:
                return CursorState()
            return CursorState(
                row.cursor, row.signpost, row.last_full_scan_at, row.runs_since_full_scan, row.last_success_at
            )

    def checkpoint(
        self, project_id: int, *, cursor: datetime | None, signpost: datetime | None, full_scan: bool
    ) -> None:
        """Move the project's cursor after a successful (or skipped) run; never moves it backwards."""
        now = utcnow()
        with self.Session.begin() as s:
            row = s.get(ProjectCursor, project_id)
            if row is None:
                row = ProjectCursor(project_id=project_id, runs_since_full_scan=0)
                s.add(row)
            if cursor is not None and (row.cursor is None or cursor > row.cursor):
                row.cursor = cursor
            row.signpost = signpost
            row.last_success_at = now
            if full_scan:
                row.last_full_scan_at = now
                row.runs_since_full_scan = 0
            else:
                row.runs_since_full_scan = (row.runs_since_full_scan or 0) + 1
