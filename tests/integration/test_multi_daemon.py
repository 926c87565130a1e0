"""Three daemons share 30 projects: ``ls-space-sync run`` processes with one PostgreSQL state
(tests/pg.py) and one store (a shared local folder; the bucket store is tested on its own), the
real Label Studio. Each daemon syncs its share; a webhook sent to the wrong daemon runs on the
holder; one daemon is killed with SIGKILL and its projects move to the two others within a lease
period; no two runs of a project ever overlap (from ``sync_runs``); the store equals the server.
"""

from __future__ import annotations

import os
import signal
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import create_engine, text

from ls_space_sync.model.records import table_to_tasks
from ls_space_sync.quickstart.localserver import free_port
from ls_space_sync.store.dataset import ProjectStore
from ls_space_sync.store.state import utcnow
from tests.integration.test_pull_sync import server_tasks
from tests.integration.test_service import CONFIG, SECRET, DaemonProcess, wait_for
from tests.pg import PostgresServer

pytestmark = pytest.mark.integration

PROJECTS, DAEMONS, LEASE = 30, 3, 3.0


@pytest.fixture(scope="module")
def pg_url():
    try:
        server = PostgresServer().start()
    except Exception as exc:  # noqa: BLE001 - PostgreSQL is a supported state database: fail, never skip
        pytest.fail(f"could not start PostgreSQL: {exc}", pytrace=False)
    yield server.create_database("multi")
    server.stop()


@pytest.fixture
def projects(new_project, ls_client):
    ids = []
    for n in range(PROJECTS):
        pid = new_project(CONFIG, title=f"multi-daemon {n}")
        ls_client.projects.import_tasks(id=pid, request=[{"data": {"text": f"p{n} task {i}"}} for i in range(2)])
        ids.append(pid)
    return ids


def start_daemon(tmp_path: Path, n: int, label_studio, projects, pg_url: str) -> DaemonProcess:
    port = free_port()
    folder = tmp_path / f"daemon{n}"
    folder.mkdir()
    cfg = {
        "label_studio": {"url": label_studio.url, "api_key": label_studio.api_key, "retries": 1, "timeout_seconds": 30},
        "projects": projects,
        "state_url": pg_url,
        "store_root": str(tmp_path / "store"),  # one store, shared
        "data_dir": str(folder),
        "log_format": "json",
        "sync": {"interval_seconds": 4, "lag_seconds": 0},
        "server": {"port": port, "webhook_secret": SECRET, "debounce_seconds": 0.2},
        "scheduler": {"jitter_seconds": 2, "shutdown_timeout_seconds": 20},
        "compaction": {"interval_seconds": None},
        "cluster": {"lease_seconds": LEASE},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return DaemonProcess(path, port)


def runs_table(pg_url: str) -> list[tuple]:
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text("SELECT project_id, run_id, status, trigger, started_at, finished_at "
                                          "FROM sync_runs WHERE kind = 'pull' ORDER BY project_id, started_at")))
    finally:
        engine.dispose()


def last_success(pg_url: str) -> dict[int, datetime]:
    out: dict[int, datetime] = {}
    for pid, _, status, _, started, _ in runs_table(pg_url):
        if status in ("succeeded", "skipped"):
            out[pid] = started
    return out


def stored_tasks(tmp_path: Path, pid: int) -> dict[int, dict]:
    return {t["id"]: t for t in table_to_tasks(ProjectStore(tmp_path / "store", pid).dataset().to_table())}


def test_three_daemons_share_the_projects_and_survive_a_kill(tmp_path, label_studio, ls_client, projects, pg_url):
    daemons = [start_daemon(tmp_path, n, label_studio, projects, pg_url) for n in range(DAEMONS)]
    try:
        def clustered():
            reports = [d.health() for d in daemons]
            if not all(r and len(r.get("cluster", {}).get("members", [])) == DAEMONS for r in reports):
                return None
            return reports
        reports = wait_for(clustered, 60, "three daemons up and seeing each other", step=0.5)
        ids = [r["cluster"]["daemon_id"] for r in reports]
        # Every project synced once, whoever held it.
        wait_for(lambda: set(last_success(pg_url)) >= set(projects), 90, "a first sync of every project", step=1)

        # The shares: every daemon schedules some, each project exactly one, and they all agree.
        reports = [d.health() for d in daemons]
        shares = {m["daemon_id"]: set(m["projects"]) for m in reports[0]["cluster"]["members"]}
        assert all({m["daemon_id"]: set(m["projects"]) for m in r["cluster"]["members"]} == shares for r in reports)
        assert all(shares[i] for i in ids) and sorted(p for s in shares.values() for p in s) == sorted(projects)
        for r in reports:
            assert all(r["projects"][str(p)]["holder"] == next(i for i in ids if p in shares[i]) for p in projects)
        metrics = httpx.get(f"{daemons[0].url}/metrics", timeout=10, trust_env=False).text
        assert f'ls_space_sync_live_daemons {float(DAEMONS)}' in metrics
        assert sum(1 for line in metrics.splitlines() if line.startswith("ls_space_sync_project_holder{")) \
            == len(shares[ids[0]])

        # A webhook sent to daemon 0 for a project daemon 1 holds runs on daemon 1.
        theirs = min(shares[ids[1]])
        answer = httpx.post(f"{daemons[0].url}/webhook", json={"action": "TASKS_CREATED", "project": {"id": theirs}},
                            headers={"X-LS-Space-Sync-Secret": SECRET}, timeout=10, trust_env=False)
        assert answer.status_code == 202 and answer.json()["daemon"] == ids[1], answer.text
        assert answer.json()["status"] == "scheduled"
        try:
            wait_for(lambda: any(r[0] == theirs and r[3] == "webhook" for r in runs_table(pg_url)), 60,
                     "the forwarded webhook's run")
        except AssertionError as exc:  # what the holder did meanwhile
            lines = [line for line in daemons[1].log().splitlines() if f'"project": {theirs}}}' in line]
            raise AssertionError(f"{exc}; daemon 1's log of project {theirs}:\n" + "\n".join(lines[-30:])) from None

        # Kill daemon 2 (no goodbye: its membership row and any lease it held stay until they expire).
        victim = ids[2]
        moved = sorted(shares[victim])
        os.kill(daemons[2].proc.pid, signal.SIGKILL)
        daemons[2].proc.wait(10)
        killed_at = utcnow()
        for pid in moved:  # changes the dead daemon can no longer pull
            ls_client.projects.import_tasks(id=pid, request=[{"data": {"text": f"after the kill {pid}"}}])

        def taken_over():
            reports = [d.health() for d in daemons[:2]]
            if not all(r and len(r["cluster"]["members"]) == 2 for r in reports):
                return None
            return reports
        reports = wait_for(taken_over, 4 * LEASE + 10, "the two live daemons dropping the dead one", step=0.5)
        left = {m["daemon_id"]: set(m["projects"]) for m in reports[0]["cluster"]["members"]}
        assert set(left) == set(ids[:2]) and sorted(p for s in left.values() for p in s) == sorted(projects)
        assert all(shares[i] <= left[i] for i in ids[:2])  # rendezvous hashing: only the dead one's share moved

        # Every project keeps being synced: a succeeded run after the kill, for all 30.
        wait_for(lambda: all(t > killed_at for p, t in last_success(pg_url).items() if p in projects)
                 and set(last_success(pg_url)) >= set(projects), 90, "a run of every project after the kill", step=1)
        for pid in moved:  # the moved projects hold the task added after the kill (2 + 1)
            wait_for(lambda pid=pid: ProjectStore(tmp_path / "store", pid).dataset().count_rows() == 3, 30,
                     f"project {pid}: the task added after the kill")
        wait_for(lambda: all(stored_tasks(tmp_path, pid) == server_tasks(label_studio, pid) for pid in projects), 60,
                 "the store equal to the server", step=2)
    finally:
        for d in daemons:
            if d.proc.poll() is None:
                d.terminate(60)
        for d in daemons:
            d.stop()

    # No two runs of a project overlap, and none is left running (the dead daemon's run, if any,
    # was finished by the next holder's recovery).
    rows = runs_table(pg_url)
    assert rows and {r[2] for r in rows} <= {"succeeded", "skipped"} | {"failed"}
    by_project: dict[int, list[tuple]] = {}
    for row in rows:
        by_project.setdefault(row[0], []).append(row)
    for pid, runs in by_project.items():
        for earlier, later in zip(runs, runs[1:]):
            assert earlier[5] is not None and earlier[5] <= later[4], f"project {pid}: {earlier[1]} overlaps {later[1]}"
    failed = [r for r in rows if r[2] == "failed"]
    assert all(r[4] < killed_at for r in failed), failed  # only a run the kill cut short may have failed
    # The store equals the server at the end.
    for pid in projects:
        assert stored_tasks(tmp_path, pid) == server_tasks(label_studio, pid), f"project {pid}"
