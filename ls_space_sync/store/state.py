"""Sync state in SQL (SQLAlchemy 2): runs, cursors, push links and mirror targets; every table and
its schema versions.

SQLite file by default; any SQLAlchemy URL works (``postgresql+psycopg2://...``). All times are
stored and returned as aware UTC datetimes.

**Schema versions.** The tables below are the head of the Alembic revisions in
``store/migrations/versions``; :class:`StateDB` brings a database to that head when it opens it
(:func:`upgrade_schema`): a new database gets every revision; one made by release 0.1.0 (tables
made by ``create_all``, no ``alembic_version``) is adopted by revision 0001 and upgraded in place.
Opening a database already at the head costs one query and never imports Alembic.

**Signpost and cursor.** A run's *signpost* is the server's clock at its start less the lag; it
is stored on the run (``sync_runs.signpost``) and on the version the run commits (the
``signpost`` property). A project's *cursor* (``project_cursors.cursor``) is the highest
signpost of its succeeded and skipped runs: the next run fetches tasks updated after it.

The dataset itself is the source of truth for what is stored (each version carries its run's
``run_id`` and signpost); these tables are the checkpoint and the history that a person or the
daemon reads.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from ls_space_sync.errors import Terminal, mask

log = logging.getLogger(__name__)

#: The schema revision the classes below map: the head of ``migrations/versions`` (a test checks).
SCHEMA_REVISION = "0003"
MIGRATIONS = Path(__file__).with_name("migrations")
# PostgreSQL advisory lock held while a process upgrades the schema: b"lsssstat" as an int64.
_PG_UPGRADE_LOCK = 0x6C73737373746174


class StateSchemaError(Terminal):
    """The state database's schema is newer than this ls-space-sync knows; exit code 2."""

    exit_code = 2


class UTCDateTime(TypeDecorator[datetime]):
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
    # A pull's signpost (named ``cursor`` before schema revision 0002); ``None`` for pushes.
    signpost: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)

    @property
    def duration_seconds(self) -> float | None:
        """Wall time of the run in seconds, or ``None`` while it runs."""
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


class ProjectCursor(Base):
    """Per project: the cursor (the highest signpost of its succeeded and skipped runs) and full-scan
    bookkeeping."""

    __tablename__ = "project_cursors"
    project_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cursor: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_full_scan_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    runs_since_full_scan: Mapped[int] = mapped_column(Integer, default=0)
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class PushLink(Base):
    """One pushed task: a source task and the target task that holds its content.

    ``*_created`` are ``created_at`` in microseconds since the epoch (a task's identity is
    (id, created_at): SQLite Label Studio reuses ids). ``*_stamp`` is the JSON of the side's stamp
    (:func:`ls_space_sync.model.changes.stamp_of`) when the two sides last agreed; ``None`` = unknown.
    """

    __tablename__ = "push_links"
    __table_args__ = (
        UniqueConstraint("source_project", "source_id", "source_created", "target_project"),
        Index("ix_push_links_target", "target_project", "target_id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source_project: Mapped[int] = mapped_column(Integer)
    source_id: Mapped[int] = mapped_column(BigInteger)
    source_created: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    source_stamp: Mapped[str | None] = mapped_column(String(200), nullable=True)
    target_project: Mapped[int] = mapped_column(Integer)
    target_id: Mapped[int] = mapped_column(BigInteger)
    target_created: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    target_stamp: Mapped[str | None] = mapped_column(String(200), nullable=True)
    content_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    pushed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class PushRun(Base):
    """Where a push run (a ``sync_runs`` row of kind ``push``) went."""

    __tablename__ = "push_runs"
    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    source_project: Mapped[int] = mapped_column(Integer, index=True)
    target_project: Mapped[int] = mapped_column(Integer, index=True)
    source_version: Mapped[int] = mapped_column(BigInteger)
    new_project: Mapped[bool] = mapped_column(Boolean, default=False)


class MirrorTarget(Base):
    """The project a mirror created for a source configured without ``target``."""

    __tablename__ = "mirror_targets"
    source_project: Mapped[int] = mapped_column(Integer, primary_key=True)
    target_project: Mapped[int] = mapped_column(Integer)


class ProjectLease(Base):
    """Who may write a project's dataset (or push into a project) now: one row per (scope, project)
    while held (:mod:`ls_space_sync.store.leases`). ``expires_at`` moves forward with each
    heartbeat; a row past it belongs to a holder that died and may be taken over."""

    __tablename__ = "project_leases"
    scope: Mapped[str] = mapped_column(String(16), primary_key=True)  # "project" (pull, compaction) or "push"
    project_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))  # the holder's daemon id, host:pid:random
    token: Mapped[str] = mapped_column(String(32))  # one per acquisition: a holder renews only its own
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DaemonMember(Base):
    """A live ``ls-space-sync run`` sharing the projects with others (one PostgreSQL state): its id,
    the URL the others forward webhooks to, and its heartbeat (:mod:`ls_space_sync.store.leases`)."""

    __tablename__ = "daemons"
    daemon_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    url: Mapped[str | None] = mapped_column(String(500), nullable=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


@dataclass(frozen=True)
class CursorState:
    """A project's checkpoint as :meth:`StateDB.cursor` returns it (all UTC)."""

    cursor: datetime | None = None
    last_full_scan_at: datetime | None = None
    runs_since_full_scan: int = 0
    last_success_at: datetime | None = None


def utcnow() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(timezone.utc)


# --- schema versions -----------------------------------------------------------------------------

def schema_revision(engine: Engine) -> str | None:
    """Return the database's schema revision (its ``alembic_version``), or ``None`` if it has none:
    a new database, or one made by release 0.1.0."""
    with engine.connect() as conn:
        try:
            return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        except (OperationalError, ProgrammingError):  # no such table; the connection rolls back
            return None


def alembic_config(connection: Connection | None = None) -> Any:
    """The Alembic config of the state database's migrations, built in code (no ``alembic.ini``).

    Args:
        connection: the connection ``env.py`` migrates, inside its transaction; ``None`` for
            commands that only read the scripts.
    """
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade_schema(engine: Engine) -> bool:
    """Bring the database to :data:`SCHEMA_REVISION`, the schema this code maps.

    Invariant: one process migrates at a time, in one transaction, and a process that waited
    for the lock finds the work done and changes nothing. On SQLite the lock is the database's
    write lock (``BEGIN IMMEDIATE``; other openers wait up to the 30 s busy timeout); on
    PostgreSQL a transaction-level advisory lock. A failed upgrade rolls back whole.

    Returns:
        Whether this call ran revisions (``False``: the database was at the head, which costs one
        query, or another process upgraded it while this one waited for the lock).

    Raises:
        StateSchemaError: the database is at a revision this code does not know (a newer release
            upgraded it).
    """
    if schema_revision(engine) == SCHEMA_REVISION:
        return False
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    known = {script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_UPGRADE_LOCK})
        current = MigrationContext.configure(conn).get_current_revision()  # again: under the lock
        if current is not None and current not in known:
            raise StateSchemaError(
                f"the state database {_where(engine)} is at schema revision {current}, which this ls-space-sync "
                f"does not know (it knows up to {SCHEMA_REVISION}): a newer release upgraded it; install that "
                "release, or point state_url at another database")
        upgraded = current != SCHEMA_REVISION
        new = not sa_inspect(conn).get_table_names()
        if upgraded:
            command.upgrade(alembic_config(conn), "head")
        conn.commit()
    if upgraded and new:  # a first run: nothing to tell the user about
        log.debug("state database %s created at schema revision %s", _where(engine), SCHEMA_REVISION)
    elif upgraded:
        log.info("state database %s: schema upgraded from %s to revision %s", _where(engine),
                 f"revision {current}" if current else "none (a database made by release 0.1.0)",
                 SCHEMA_REVISION)
    return upgraded


def _where(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def use_wal(engine: Engine) -> bool:
    """Put a SQLite state database in write-ahead-log mode, once; return whether it is in it.

    WAL is a property of the database file (it persists), so it is set by one opener after the
    schema is in place, never on every connection: switching needs an exclusive lock, and SQLite
    refuses it at once (``database is locked``, no busy wait) while another process holds the
    database, e.g. two processes creating a new state database together (measured: that failed
    when every connection switched, 2026-12-01). A refused switch is left for a later opener; the
    database works the same in its default mode, only each commit costs an fsync of a journal.
    With WAL, connections use ``synchronous=NORMAL`` (:func:`_sqlite_connection`): a commit costs
    0.02 ms instead of 18.8 ms and a run's bookkeeping 22-40 ms instead of 63-95 ms (2026-12-01,
    commit 22aa0c8, docs/benchmarks.md); a commit still survives the process crashing, one lost to
    a power cut is what run recovery covers (the version carries its run_id and signpost). Leaves
    ``-wal``/``-shm`` files beside the database, which must be on a local disk (as SQLite advises).
    """
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        return False
    with engine.connect() as conn:
        mode = str(conn.exec_driver_sql("PRAGMA journal_mode").scalar()).lower()
    if mode == "wal":
        return True
    raw = engine.raw_connection()  # its own connection, closed below: it changes the busy timeout
    try:
        cursor = raw.cursor()
        cursor.execute("PRAGMA busy_timeout = 0")  # a busy database: leave it, never wait
        mode = str(cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
    except Exception as exc:  # noqa: BLE001 - sqlite3.OperationalError: locked by another process
        log.debug("state database %s: journal mode left as it is (%s)", _where(engine), exc)
        return False
    finally:
        raw.invalidate()  # never back to the pool with busy_timeout 0
    engine.dispose()  # the pooled connections were opened in the old mode: reopened, they get NORMAL
    return mode == "wal"


def _sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    """Per SQLite connection: ``synchronous=NORMAL`` when the database is in WAL mode (safe there;
    in the default rollback mode FULL stays)."""
    cursor = dbapi_connection.cursor()
    try:
        if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
            cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


class StateDB:
    """Access to the state database, upgraded to this code's schema on open (:func:`upgrade_schema`).

    Args:
        url: a SQLAlchemy URL; SQLite files get their folder created.

    Raises:
        StateSchemaError: the database was upgraded by a newer release.
    """

    def __init__(self, url: str):
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {"future": True, "pool_pre_ping": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_connection)
        try:
            upgrade_schema(self.engine)
            use_wal(self.engine)
        except BaseException:
            self.engine.dispose()
            raise
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
            if isinstance(fields.get("error"), str):
                fields["error"] = mask(fields["error"])  # a server may echo a token in its error body
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
                row.cursor, row.last_full_scan_at, row.runs_since_full_scan, row.last_success_at
            )

    def checkpoint(self, project_id: int, *, signpost: datetime | None, full_scan: bool) -> None:
        """Move the project's cursor to a succeeded (or skipped) run's signpost; never backwards."""
        now = utcnow()
        with self.Session.begin() as s:
            row = s.get(ProjectCursor, project_id)
            if row is None:
                row = ProjectCursor(project_id=project_id, runs_since_full_scan=0)
                s.add(row)
            if signpost is not None and (row.cursor is None or signpost > row.cursor):
                row.cursor = signpost
            row.last_success_at = now
            if full_scan:
                row.last_full_scan_at = now
                row.runs_since_full_scan = 0
            else:
                row.runs_since_full_scan = (row.runs_since_full_scan or 0) + 1
