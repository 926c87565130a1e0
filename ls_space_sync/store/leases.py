"""Leases and daemon membership in the state database: one writer per project across hosts, and
the daemons that share the projects (tables ``project_leases`` and ``daemons``, revision 0003).

**When.** :func:`writer_lock` is the one-writer lock every write takes. With the default set-up
(SQLite state, store in a local folder) it is today's :func:`ls_space_sync.store.dataset.project_lock`
(an OS file lock next to the store). When the state is PostgreSQL, or the store is not a local
path (``s3://``, ``gs://``, ``az://``), a file lock cannot reach the other writers, so it is a
*lease*: a row ``(scope, project_id)`` with the holder's id, a token, a heartbeat and an expiry.

**Atomic on SQLite and PostgreSQL.** A lease is taken by one statement, never read-then-write:
``UPDATE project_leases SET owner=me, token=t, expires_at=now+ttl ... WHERE scope=s AND
project_id=p AND expires_at < now`` takes over an expired row; if no row changed, ``INSERT``
makes a new one and the primary key refuses it when another writer holds (or just took) the
row. PostgreSQL re-checks the ``WHERE`` of an ``UPDATE`` after waiting for a concurrent writer
of the row (READ COMMITTED), SQLite serialises writers: on both, of two writers exactly one wins.

Why rows and not PostgreSQL advisory locks: an advisory lock lives in one session, so each held
project pins a pooled connection for the whole run (a daemon running 4 syncs, a compaction and
its own queries needs them all), it does not work on SQLite (a bucket store with a SQLite state),
and it says nothing to ``/health`` about who holds what. Measured 2026-12-01 at commit a0517c7
(2 cores, load average 6.8; a throwaway PostgreSQL from tests/pg.py on loopback; median of 200):
taking and giving back a lease costs 4.6 ms on PostgreSQL (an advisory lock and unlock: 2.1 ms)
and 68 ms on SQLite (three committed writes), noise next to a sync run (0.2-1 s for a small
unchanged project). The price of rows is a clock: expiry is the holder's UTC clock plus the
lease period, so hosts must keep their clocks within a fraction of ``cluster.lease_seconds``
(NTP does).

**Heartbeat.** While a lease is held, a thread renews it every third of the lease period
(``UPDATE ... WHERE token = mine``). A holder killed with SIGKILL stops renewing; its lease
expires within one lease period and the next writer takes it over (its run stays recorded as
running until that writer's recovery finishes it, as with the file lock). A holder that finds
its lease taken (it stalled longer than the lease period) logs an error; Lance commits are
atomic, so the store holds whole versions either way.

**Members.** :class:`Membership` is a daemon's row in ``daemons`` (its id and advertised URL),
renewed on the same period. :func:`owner_of` spreads projects over the live members by
rendezvous hashing: every daemon computes the same owner from the same member list, and when a
member leaves or dies only its projects move.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Iterator, Sequence

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from ls_space_sync.settings import Settings
from ls_space_sync.store.dataset import ProjectLocked, Root, is_local, project_lock
from ls_space_sync.store.state import DaemonMember, ProjectLease, StateDB, utcnow

log = logging.getLogger(__name__)

PROJECT, PUSH = "project", "push"  # lease scopes: writes to a project's dataset; pushes into a project

_ids: dict[int, str] = {}


def daemon_id() -> str:
    """This process's id as a lease owner and daemon member: ``<host>:<pid>:<6 hex digits>``
    (the random part tells a restarted process from the old one that had the same pid)."""
    pid = os.getpid()
    if pid not in _ids:
        _ids[pid] = f"{socket.gethostname()}:{pid}:{secrets.token_hex(3)}"
    return _ids[pid]


def _dead_here(owner: str) -> bool:
    """Whether a :func:`daemon_id` names a process of this host that no longer runs."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or owner == daemon_id():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def store_is_local(settings: Settings) -> bool:
    """Whether the store root is a local folder (a path, or a ``file://`` URI)."""
    return is_local(settings.resolved_store_root)


def state_is_shared(settings: Settings) -> bool:
    """Whether the state database is one that several hosts can share (PostgreSQL)."""
    return settings.resolved_state_url.startswith("postgresql")


def uses_leases(settings: Settings) -> bool:
    """Whether writers coordinate by leases in the state database instead of local lock files."""
    return state_is_shared(settings) or not store_is_local(settings)


@dataclass(frozen=True)
class LeaseInfo:
    """A held lease as :func:`held_leases` reads it (times UTC)."""

    scope: str
    project_id: int
    owner: str
    acquired_at: datetime
    heartbeat_at: datetime
    expires_at: datetime


class Lease:
    """One held lease: taken by :meth:`acquire`, renewed by a heartbeat thread, given back by
    :meth:`release`. Use :func:`writer_lock` rather than this class.

    Args:
        state: the state database.
        scope: :data:`PROJECT` or :data:`PUSH`.
        project_id: the project.
        seconds: the lease period (``cluster.lease_seconds``).
        owner: the holder's id (default :func:`daemon_id`).
    """

    def __init__(self, state: StateDB, scope: str, project_id: int, seconds: float, owner: str | None = None):
        self.state, self.scope, self.project_id, self.seconds = state, scope, project_id, seconds
        self.owner = owner or daemon_id()
        self.token = secrets.token_hex(16)
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _where(self) -> Any:
        return (ProjectLease.scope == self.scope) & (ProjectLease.project_id == self.project_id)

    def acquire(self) -> None:
        """Take the lease (or a dead holder's expired one) and start the heartbeat.

        Raises:
            ProjectLocked: another writer holds it; the message names it and when its lease expires.
        """
        now = utcnow()
        values = {"owner": self.owner, "token": self.token, "acquired_at": now, "heartbeat_at": now,
                  "expires_at": now + timedelta(seconds=self.seconds)}
        with self.state.engine.begin() as conn:
            taken = conn.execute(update(ProjectLease).where(self._where(), ProjectLease.expires_at < now)
                                 .values(**values)).rowcount
        if not taken:
            try:
                with self.state.engine.begin() as conn:
                    conn.execute(insert(ProjectLease).values(scope=self.scope, project_id=self.project_id, **values))
            except IntegrityError:
                if not self._take_from_dead_local_holder(values):
                    raise self._refusal() from None
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.scope}-{self.project_id}", daemon=True)
        self._thread.start()

    def _take_from_dead_local_holder(self, values: dict[str, Any]) -> bool:
        """Take the lease of a holder that ran on this host and whose process is gone (killed, OOM):
        what the kernel does for a file lock, so a crashed run on this host never blocks the next
        one for a lease period. A holder on another host is only ever taken over after it expires."""
        with self.state.Session() as s:
            row = s.scalars(select(ProjectLease).where(self._where())).first()
        if row is None or not _dead_here(row.owner):
            return False
        with self.state.engine.begin() as conn:
            taken = conn.execute(update(ProjectLease).where(self._where(), ProjectLease.token == row.token)
                                 .values(**values)).rowcount
        if taken:
            log.warning("project %s: took over the %s lease of %s, a process on this host that is gone",
                        self.project_id, self.scope, row.owner)
        return bool(taken)

    def _refusal(self) -> ProjectLocked:
        with self.state.Session() as s:
            row = s.scalars(select(ProjectLease).where(self._where())).first()
        what = "synced" if self.scope == PROJECT else "pushed into"
        if row is not None and row.owner == self.owner:
            return ProjectLocked(f"project {self.project_id} is already being {what} in this process; "
                                 "wait for that run")
        holder = f"lease held by {row.owner} until {row.expires_at:%Y-%m-%d %H:%M:%S} UTC" if row is not None \
            else "lease just taken"
        return ProjectLocked(f"project {self.project_id} is being {what} by another process ({holder}); "
                             "wait for it to finish, or stop the other ls-space-sync")

    def renew(self) -> bool:
        """Move the expiry one lease period from now; ``False`` if the lease is no longer ours."""
        now = utcnow()
        with self.state.engine.begin() as conn:
            ok = conn.execute(update(ProjectLease).where(self._where(), ProjectLease.token == self.token)
                              .values(heartbeat_at=now, expires_at=now + timedelta(seconds=self.seconds))).rowcount
        return bool(ok)

    def _beat(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                if not self.renew():
                    self.lost = True
                    log.error("project %s: the %s lease was taken over by another writer (this process stalled "
                              "longer than cluster.lease_seconds = %.0f s)", self.project_id, self.scope, self.seconds)
                    return
            except Exception as exc:  # noqa: BLE001 - a database hiccup: try again on the next beat
                log.warning("project %s: cannot renew the %s lease (%s: %s); retrying", self.project_id,
                            self.scope, type(exc).__name__, exc)

    def release(self) -> None:
        """Stop the heartbeat and delete the row if it is still ours (never another writer's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            with self.state.engine.begin() as conn:
                conn.execute(delete(ProjectLease).where(self._where(), ProjectLease.token == self.token))
        except Exception as exc:  # noqa: BLE001 - the lease then expires by itself
            log.warning("project %s: cannot give back the %s lease (%s); it expires in %.0f s", self.project_id,
                        self.scope, type(exc).__name__, self.seconds)


@contextmanager
def writer_lock(settings: Settings, state: StateDB | None, project_id: int, *, lock_root: Root | None = None,
                scope: str = PROJECT) -> Iterator[None]:
    """Hold the one-writer lock of a project, or raise :class:`ProjectLocked` at once.

    A lease in the state database when :func:`uses_leases` (PostgreSQL state, or a store that is
    not a local folder); else :func:`ls_space_sync.store.dataset.project_lock` on ``lock_root``
    (default: the store root), as before.

    Args:
        settings: the settings (``state_url``, ``store_root``, ``cluster.lease_seconds``).
        state: the state database the lease is kept in (``None``: open ``settings.resolved_state_url``
            for the time the lease is held).
        project_id: the project.
        lock_root: the folder of the local lock file (what ``project_lock`` took before).
        scope: :data:`PROJECT` (the dataset: pulls, compaction) or :data:`PUSH` (pushes into it).

    Raises:
        ProjectLocked: another writer holds the lock or lease.
    """
    if not uses_leases(settings):
        with project_lock(lock_root if lock_root is not None else settings.resolved_store_root, project_id):
            yield
        return
    own = state is None
    db = StateDB(settings.resolved_state_url) if state is None else state
    try:
        lease = Lease(db, scope, project_id, settings.cluster.lease_seconds)
        lease.acquire()
        try:
            yield
        finally:
            lease.release()
    finally:
        if own:
            db.dispose()


def held_leases(state: StateDB, scope: str | None = PROJECT) -> dict[int, LeaseInfo]:
    """The unexpired leases, ``{project id: lease}`` (of ``scope``; ``None``: every scope, the last wins)."""
    now = utcnow()
    with state.Session() as s:
        q = select(ProjectLease).where(ProjectLease.expires_at >= now)
        if scope is not None:
            q = q.where(ProjectLease.scope == scope)
        return {r.project_id: LeaseInfo(r.scope, r.project_id, r.owner, r.acquired_at, r.heartbeat_at, r.expires_at)
                for r in s.scalars(q)}


# --- daemons -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Member:
    """A live daemon (times UTC)."""

    daemon_id: str
    url: str | None
    started_at: datetime
    heartbeat_at: datetime
    expires_at: datetime


class Membership:
    """A daemon's row in ``daemons``: :meth:`beat` every third of the lease period, :meth:`leave` at stop.

    Args:
        state: the state database the daemons share.
        url: the advertised URL the others forward webhooks to.
        seconds: the lease period: a member whose beat is older than this is dead.
        member_id: default :func:`daemon_id`.
    """

    def __init__(self, state: StateDB, url: str | None, seconds: float, member_id: str | None = None):
        self.state, self.url, self.seconds = state, url, seconds
        self.id = member_id or daemon_id()
        self.started_at = utcnow()

    def beat(self) -> list[Member]:
        """Renew this daemon's row (create it the first time); return the live members, sorted by id."""
        now = utcnow()
        values = {"url": self.url, "heartbeat_at": now, "expires_at": now + timedelta(seconds=self.seconds)}
        with self.state.engine.begin() as conn:
            changed = conn.execute(update(DaemonMember).where(DaemonMember.daemon_id == self.id).values(**values)).rowcount
            if not changed:
                conn.execute(insert(DaemonMember).values(daemon_id=self.id, started_at=self.started_at, **values))
            # Rows of members dead for ten lease periods are only clutter: the dead are skipped anyway.
            conn.execute(delete(DaemonMember).where(
                DaemonMember.expires_at < now - timedelta(seconds=10 * self.seconds)))
        return live_members(self.state)

    def leave(self) -> None:
        """Delete this daemon's row, so the others take its projects at their next beat."""
        try:
            with self.state.engine.begin() as conn:
                conn.execute(delete(DaemonMember).where(DaemonMember.daemon_id == self.id))
        except Exception as exc:  # noqa: BLE001 - the row then expires by itself
            log.warning("cannot remove this daemon from the members (%s); it expires in %.0f s",
                        type(exc).__name__, self.seconds)


def live_members(state: StateDB) -> list[Member]:
    """The daemons whose heartbeat has not expired, sorted by id."""
    now = utcnow()
    with state.Session() as s:
        rows = s.scalars(select(DaemonMember).where(DaemonMember.expires_at >= now).order_by(DaemonMember.daemon_id))
        return [Member(r.daemon_id, r.url, r.started_at, r.heartbeat_at, r.expires_at) for r in rows]


def owner_of(project_id: int, member_ids: Sequence[str]) -> str | None:
    """The member that syncs a project: the highest ``sha1(member id, project id)`` (rendezvous
    hashing), or ``None`` with no members. Adding or removing a member moves only its share."""
    if not member_ids:
        return None
    return max(member_ids, key=lambda m: hashlib.sha1(f"{m}/{project_id}".encode()).digest())
