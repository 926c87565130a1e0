"""Sync state on a real PostgreSQL server: runs, cursors, recovery, the lock, the daemon's job store.

The server is a throwaway one (tests/pg.py) started from the system's PostgreSQL binaries; if it
cannot start, these tests fail: PostgreSQL is a supported state database, not an optional one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, inspect, text

from ls_space_sync.service.daemon import Daemon
from ls_space_sync.settings import load_settings
from ls_space_sync.store.state import FAILED, SKIPPED, SUCCEEDED
from ls_space_sync.store.leases import writer_lock
from ls_space_sync.pull.run import Syncer
from tests.pg import PostgresServer

pytestmark = pytest.mark.integration

CONFIG = ('<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
          '<Choice value="pos"/><Choice value="neg"/></Choices></View>')
RESULT = [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["neg"]}}]


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server for this module (127.0.0.1, a free port, a temp dir)."""
    try:
        server = PostgresServer().start()
    except Exception as exc:  # noqa: BLE001 - any reason must fail the tests, not skip them
        pytest.fail(f"could not start PostgreSQL: {exc}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres):
    """A fresh, empty database for one test."""
    return postgres.create_database()


@pytest.fixture
def project(new_project, ls_client):
    pid = new_project(CONFIG, title="postgres state")
    ls_client.projects.import_tasks(id=pid, request=[{"data": {"text": f"task {i}"}} for i in range(5)])
    return pid


def make_settings(tmp_path, label_studio, project_id, state_url, **extra):
    return load_settings(env={"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.api_key},
                         overrides={"data_dir": str(tmp_path / "data"), "projects": [project_id],
                                    "state_url": state_url, "sync": {"lag_seconds": 2},
                                    "label_studio": {"retries": 0}, **extra})


def test_runs_and_cursors_live_in_postgres(tmp_path, label_studio, ls_client, project, pg_url):
    syncer = Syncer(make_settings(tmp_path, label_studio, project, pg_url))
    first = syncer.run_once(project)
    assert (first.status, first.inserted, first.tag) == (SUCCEEDED, 5, "run-000001")
    cursor1 = syncer.state.cursor(project).cursor
    task_id = min(t.id for t in ls_client.tasks.list(project=project))
    ls_client.annotations.create(id=task_id, result=RESULT)
    second = syncer.run_once(project)
    assert (second.status, second.updated, second.tag) == (SUCCEEDED, 1, "run-000002")
    third = syncer.run_once(project)
    assert third.status == SKIPPED
    cursor3 = syncer.state.cursor(project)
    assert cursor3.cursor >= cursor1 and cursor3.cursor.tzinfo is not None
    assert cursor3.last_success_at is not None
    syncer.client.close()
    syncer.state.dispose()

    # Read it back as PostgreSQL holds it: the tables and rows, not the ORM's view.
    engine = create_engine(pg_url)
    try:
        assert {"sync_runs", "project_cursors"} <= set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            rows = conn.execute(text("select seq, status, inserted, updated, tag, started_at from sync_runs "
                                     "where project_id = :p order by seq"), {"p": project}).all()
            assert [(r.seq, r.status, r.inserted, r.updated, r.tag) for r in rows] == [
                (1, SUCCEEDED, 5, 0, "run-000001"), (2, SUCCEEDED, 0, 1, "run-000002"), (3, SKIPPED, 0, 0, None)]
            assert rows[0].started_at.utcoffset().total_seconds() == 0  # timestamptz, UTC
            stored_cursor = conn.execute(text("select cursor from project_cursors where project_id = :p"),
                                         {"p": project}).scalar_one()
            assert stored_cursor == cursor3.cursor
    finally:
        engine.dispose()


def test_a_second_process_is_refused_by_the_lock_and_records_nothing(tmp_path, label_studio, project, pg_url):
    settings = make_settings(tmp_path, label_studio, project, pg_url)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"label_studio": {"url": label_studio.url, "api_key": label_studio.api_key},
                                   "projects": [project], "data_dir": str(tmp_path / "data"), "state_url": pg_url}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "LS_SPACE_SYNC_"))}
    exe = Path(sys.executable).parent / "ls-space-sync"
    # With a PostgreSQL state the one-writer lock is a lease in the state database (store/leases.py),
    # so another host's writer is refused too, not only one on this host.
    with writer_lock(settings, None, project):
        out = subprocess.run([str(exe), "-c", str(cfg), "sync", "--no-progress"], env=env, capture_output=True,
                             text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "being synced by another process" in out.stdout
    syncer = Syncer(settings)
    assert syncer.state.runs(project) == []  # a refused run is not a run
    assert syncer.run_once(project).status == SUCCEEDED  # the lock is free again
    syncer.client.close()
    syncer.state.dispose()


def test_a_run_killed_after_its_commit_is_recovered_from_postgres(tmp_path, label_studio, project, pg_url):
    syncer = Syncer(make_settings(tmp_path, label_studio, project, pg_url))

    def die():
        raise KeyboardInterrupt("killed between commit and checkpoint")

    with pytest.raises(KeyboardInterrupt):
        syncer.run_once(project, _after_commit=die)
    first = syncer.state.runs(project)[0]
    assert first.status == FAILED
    syncer.state.finish_run(first.run_id, "running")  # as a SIGKILL would have left it
    result = syncer.run_once(project)
    assert result.recovered == [first.run_id]
    runs = {r.run_id: r for r in syncer.state.runs(project)}
    assert runs[first.run_id].status == SUCCEEDED and runs[first.run_id].inserted == 5
    assert syncer.store(project).tags() == {"run-000001": 1}
    syncer.client.close()
    syncer.state.dispose()


def test_daemon_keeps_its_jobs_and_runs_in_postgres(tmp_path, label_studio, project, pg_url):
    settings = make_settings(tmp_path, label_studio, project, pg_url, scheduler={"job_store": "sql"})
    daemon = Daemon(settings)
    daemon.scheduler.start(paused=True)
    daemon.set_projects([project])
    try:
        assert daemon.sync_job(project, "schedule").status == SUCCEEDED
        assert daemon.request_sync(project) is not None
        engine = create_engine(pg_url)
        with engine.connect() as conn:
            ids = sorted(r[0] for r in conn.execute(text("select id from apscheduler_jobs")))
            trigger = conn.execute(text("select trigger from sync_runs")).scalar_one()
        engine.dispose()
        assert ids == [f"compact-{project}", f"sync-{project}", f"webhook-{project}"]  # compaction: daily by default
        assert trigger == "schedule"
        assert daemon.health()["projects"][str(project)]["last_run"]["status"] == SUCCEEDED
    finally:
        assert daemon.stop(timeout=10)
