"""Leases in the state database (store/leases.py): one writer per project on SQLite and on a real
PostgreSQL (tests/pg.py), a second writer refused with the lock's message, a dead holder's lease
taken over once expired, the heartbeat keeping a long run's lease, many racing writers of which
exactly one wins, and the membership/ownership the daemons share the projects by.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import update

from ls_space_sync.settings import load_settings
from ls_space_sync.store import leases
from ls_space_sync.store.dataset import ProjectLocked
from ls_space_sync.store.leases import (
    PUSH,
    Lease,
    Membership,
    held_leases,
    live_members,
    owner_of,
    uses_leases,
    writer_lock,
)
from ls_space_sync.store.state import ProjectLease, StateDB, utcnow
from tests.pg import PostgresServer


@pytest.fixture(scope="module")
def postgres():
    try:
        server = PostgresServer().start()
    except Exception as exc:  # noqa: BLE001 - PostgreSQL is a supported state database: fail, never skip
        pytest.fail(f"could not start PostgreSQL: {exc}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return request.getfixturevalue("postgres").create_database()


def settings_for(tmp_path, state_url, **cluster):
    # SQLite takes leases when the store is not a local folder (a bucket); PostgreSQL always.
    overrides = {"data_dir": str(tmp_path), "state_url": state_url, "store_root": "s3://bucket/datasets",
                 "cluster": {"lease_seconds": 3, **cluster}}
    return load_settings(env={}, overrides=overrides)


@pytest.fixture
def state(state_url):
    db = StateDB(state_url)
    yield db
    db.dispose()


def test_leases_are_used_for_postgresql_or_a_store_that_is_not_a_local_folder(tmp_path):
    sqlite = f"sqlite:///{tmp_path / 's.db'}"
    assert not uses_leases(load_settings(env={}, overrides={"data_dir": str(tmp_path)}))
    assert not uses_leases(load_settings(env={}, overrides={"state_url": sqlite, "store_root": str(tmp_path)}))
    assert uses_leases(load_settings(env={}, overrides={"state_url": "postgresql+psycopg2://u@h/db"}))
    assert uses_leases(load_settings(env={}, overrides={"state_url": sqlite, "store_root": "s3://bucket/prefix"}))


def test_local_default_keeps_the_file_lock(tmp_path):
    settings = load_settings(env={}, overrides={"data_dir": str(tmp_path)})
    db = StateDB(settings.resolved_state_url)
    try:
        with writer_lock(settings, db, 4):
            assert (settings.resolved_store_root / "project-4.lock").exists()
            assert held_leases(db) == {}
            with pytest.raises(ProjectLocked, match="already being synced in this process"):
                with writer_lock(settings, db, 4):
                    pass
    finally:
        db.dispose()


def test_a_second_writer_is_refused_with_the_holder_and_the_fix(tmp_path, state_url, state):
    settings = settings_for(tmp_path, state_url)
    other = Lease(state, "project", 7, 3, owner="hostb:99:abcdef")
    other.acquire()
    try:
        with pytest.raises(ProjectLocked, match=r"project 7 is being synced by another process \(lease held by "
                                                r"hostb:99:abcdef until .* UTC\); wait for it to finish, or stop "
                                                r"the other ls-space-sync"):
            with writer_lock(settings, state, 7):
                pass
        with writer_lock(settings, state, 8):  # other projects, and the push scope of 7, are free
            with writer_lock(settings, state, 7, scope=PUSH):
                assert set(held_leases(state)) == {7, 8} and set(held_leases(state, PUSH)) == {7}
                with pytest.raises(ProjectLocked, match="already being synced in this process"):
                    with writer_lock(settings, state, 8):
                        pass
    finally:
        other.release()
    assert held_leases(state, None) == {}  # released leases are gone; writer_lock frees 7 for the next
    with writer_lock(settings, state, 7):
        assert held_leases(state)[7].owner == leases.daemon_id()


def test_a_dead_holders_lease_is_taken_over_once_expired(tmp_path, state_url, state):
    settings = settings_for(tmp_path, state_url)
    dead = Lease(state, "project", 5, 3, owner="hostc:1:000000")
    dead.acquire()
    dead._stop.set()  # a SIGKILL: no more heartbeats, no release
    with pytest.raises(ProjectLocked):
        with writer_lock(settings, state, 5):
            pass
    with state.engine.begin() as conn:  # as if its lease period had passed
        conn.execute(update(ProjectLease).values(expires_at=utcnow() - timedelta(seconds=1)))
    with writer_lock(settings, state, 5):
        assert held_leases(state)[5].owner == leases.daemon_id()
        assert not dead.renew()  # the old holder cannot renew what it lost...
    dead.release()  # ...nor delete the new holder's row
    assert held_leases(state) == {}


def test_the_heartbeat_keeps_a_long_run_s_lease(tmp_path, state_url, state):
    settings = settings_for(tmp_path, state_url, lease_seconds=1)
    with writer_lock(settings, state, 3):
        first = held_leases(state)[3]
        time.sleep(2.5)  # more than two lease periods
        later = held_leases(state)[3]
        assert later.expires_at > first.expires_at and later.heartbeat_at > first.heartbeat_at
        with pytest.raises(ProjectLocked):
            Lease(state, "project", 3, 1, owner="other:1:1").acquire()


def test_of_many_racing_writers_exactly_one_wins(tmp_path, state_url, state):
    start, wins, refusals = threading.Barrier(8), [], []

    def race(n):
        lease = Lease(state, "project", 11, 30, owner=f"racer:{n}:0")
        start.wait()
        try:
            lease.acquire()
            wins.append(lease)
        except ProjectLocked:
            refusals.append(n)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(refusals) == 7
    assert held_leases(state)[11].owner == wins[0].owner
    wins[0].release()


def test_members_and_the_owners_of_projects(state):
    a, b = Membership(state, "http://a", 3, member_id="a:1:0"), Membership(state, "http://b", 3, member_id="b:1:0")
    a.beat()
    assert [m.daemon_id for m in b.beat()] == ["a:1:0", "b:1:0"]
    ids = [m.daemon_id for m in live_members(state)]
    owners = {pid: owner_of(pid, ids) for pid in range(1, 101)}
    share = sum(1 for o in owners.values() if o == "a:1:0")
    assert 30 <= share <= 70  # spread, not all on one
    b.leave()
    assert [m.daemon_id for m in live_members(state)] == ["a:1:0"]
    assert all(owner_of(pid, ["a:1:0"]) == "a:1:0" for pid in owners)
    # A third member takes only its own share: no project moves between the two that stay.
    with_c = {pid: owner_of(pid, ids + ["c:1:0"]) for pid in owners}
    assert all(with_c[pid] in (owners[pid], "c:1:0") for pid in owners)
    with state.engine.begin() as conn:  # a's heartbeat expires: it is no longer live
        from ls_space_sync.store.state import DaemonMember

        conn.execute(update(DaemonMember).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert live_members(state) == [] and owner_of(1, []) is None


def test_a_daemon_schedules_its_share_and_takes_the_rest_when_the_other_leaves(tmp_path, postgres):
    """The daemon side, without Label Studio: a PostgreSQL state makes it share the projects; a webhook
    for a project whose holder does not answer is scheduled here (nothing lost); when the other
    member leaves, this daemon schedules every project."""
    from fastapi.testclient import TestClient

    from ls_space_sync.quickstart.localserver import free_port
    from ls_space_sync.service.daemon import Daemon
    from ls_space_sync.service.http import create_app

    projects = list(range(1, 21))
    settings = load_settings(env={"LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "k"}, overrides={
        "data_dir": str(tmp_path), "state_url": postgres.create_database(), "projects": projects,
        "server": {"webhook_secret": "s3cret", "debounce_seconds": 600}, "compaction": {"interval_seconds": None},
        "sync": {"interval_seconds": 600}, "scheduler": {"jitter_seconds": 600}})
    daemon = Daemon(settings)
    assert daemon.clustered
    gone = Membership(daemon.state, f"http://127.0.0.1:{free_port()}", 30, member_id="gone:1:0")  # nothing listens
    gone.beat()
    daemon.scheduler.start(paused=True)
    daemon.membership = Membership(daemon.state, "http://127.0.0.1:1", 30, daemon.daemon_id)
    daemon.members = daemon.membership.beat()
    daemon.set_projects(projects)
    try:
        mine = sorted(p for p in projects if daemon.owns(p))
        theirs = sorted(set(projects) - set(mine))
        assert mine and theirs and daemon.owned == set(mine)
        assert {j.id for j in daemon.scheduler.get_jobs()} == {f"sync-{p}" for p in mine}

        app = TestClient(create_app(daemon))
        answer = app.post("/webhook", json={"action": "TASKS_CREATED", "project": {"id": theirs[0]}},
                          headers={"X-LS-Space-Sync-Secret": "s3cret"})
        assert answer.status_code == 202 and answer.json()["status"] == "scheduled" and "daemon" not in answer.json()
        assert daemon.scheduler.get_job(f"webhook-{theirs[0]}") is not None  # scheduled here instead
        metrics = app.get("/metrics").text
        assert 'ls_space_sync_webhooks_forwarded_total{outcome="failed"} 1.0' in metrics
        assert "ls_space_sync_live_daemons 2.0" in metrics
        health = app.get("/health").json()
        assert {m["daemon_id"] for m in health["cluster"]["members"]} == {"gone:1:0", daemon.daemon_id}
        assert health["projects"][str(theirs[0])]["holder"] == "gone:1:0"
        assert health["projects"][str(mine[0])]["holder"] == daemon.daemon_id

        gone.leave()
        daemon.beat()
        assert daemon.owned == set(projects)
        assert {f"sync-{p}" for p in projects} <= {j.id for j in daemon.scheduler.get_jobs()}
        assert {m["daemon_id"] for m in app.get("/health").json()["cluster"]["members"]} == {daemon.daemon_id}
    finally:
        daemon.stop(timeout=5)


def test_a_lease_of_a_process_of_this_host_that_is_gone_is_taken_over_at_once(tmp_path, state_url, state):
    """A killed holder on this host (no release, lease unexpired) does not block the next writer."""
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    gone = int(dead.stdout)  # a pid that has exited
    settings = settings_for(tmp_path, state_url, lease_seconds=600)
    Lease(state, "project", 11, 600, owner=f"{socket.gethostname()}:{gone}:abcdef").acquire()
    with writer_lock(settings, state, 11):
        assert held_leases(state)[11].owner == leases.daemon_id()
    # A live holder of this host (this process under another id) and one of another host are refused.
    for owner in (f"{socket.gethostname()}:{__import__('os').getpid()}:fedcba", f"elsewhere:{gone}:abcdef"):
        holder = Lease(state, "project", 12, 600, owner=owner)
        holder.acquire()
        try:
            with pytest.raises(ProjectLocked, match="being synced by another process"):
                with writer_lock(settings, state, 12):
                    pass
        finally:
            holder.release()
