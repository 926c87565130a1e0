"""``scheduler.job_store: redis://...`` against a real ``redis-server`` (tests/redisserver.py) and the
real Label Studio: the daemon keeps its jobs in Redis, runs the syncs they schedule, and a job
still pending when the daemon stops runs after a restart (APScheduler's RedisJobStore keeps jobs
in the hash ``apscheduler.jobs`` and their next run times in the sorted set ``apscheduler.run_times``).
"""

from __future__ import annotations

import time

import pytest
import redis

from ls_space_sync.service.daemon import Daemon
from ls_space_sync.settings import load_settings
from ls_space_sync.store.state import SUCCEEDED
from tests.integration.test_service import CONFIG, wait_for
from tests.redisserver import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis_server():
    try:
        server = RedisServer().start()
    except Exception as exc:  # noqa: BLE001 - Redis is a supported job store: fail, never skip
        pytest.fail(f"could not start redis-server: {exc}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def project(new_project, ls_client):
    pid = new_project(CONFIG, title="redis job store")
    ls_client.projects.import_tasks(id=pid, request=[{"data": {"text": f"task {i}"}} for i in range(3)])
    return pid


def settings_for(tmp_path, label_studio, project, url, debounce=2.0):
    return load_settings(env={}, overrides={
        "label_studio": {"url": label_studio.url, "api_key": label_studio.api_key, "retries": 0},
        "projects": [project], "data_dir": str(tmp_path / "data"),
        "sync": {"interval_seconds": 3600, "lag_seconds": 0},
        "server": {"debounce_seconds": debounce},
        "scheduler": {"job_store": url, "jitter_seconds": 0, "shutdown_timeout_seconds": 30},
        "compaction": {"interval_seconds": None},
    })


def test_the_daemon_keeps_its_jobs_in_redis_and_they_survive_a_restart(tmp_path, label_studio, ls_client, project,
                                                                        redis_server):
    url = redis_server.url(db=3)
    client = redis.Redis.from_url(url)
    first = Daemon(settings_for(tmp_path, label_studio, project, url))
    first.start()
    try:
        # The poll job is in Redis, and the scheduler ran it (an interval project syncs at start).
        assert {k.decode() for k in client.hkeys("apscheduler.jobs")} == {f"sync-{project}"}
        wait_for(lambda: first.state.last_run(project, SUCCEEDED), 60, "the sync at start", step=0.2)
        assert first.state.last_run(project).trigger == "schedule"
        poll_due = client.zscore("apscheduler.run_times", f"sync-{project}")
        assert poll_due is not None and poll_due > time.time() + 3000  # the next poll, an hour on

        # A webhook run is due in 2 s, but the daemon stops before: the job stays in Redis.
        ls_client.projects.import_tasks(id=project, request=[{"data": {"text": "while stopped"}}])
        assert first.request_sync(project) is not None
        assert client.hexists("apscheduler.jobs", f"webhook-{project}")
    finally:
        assert first.stop(timeout=30)
    runs_before = len(first.state.runs(project))
    assert client.hexists("apscheduler.jobs", f"webhook-{project}") and client.hexists("apscheduler.jobs",
                                                                                         f"sync-{project}")
    time.sleep(2.5)  # the webhook job is now overdue

    second = Daemon(settings_for(tmp_path, label_studio, project, url))
    second.start()
    try:
        run = wait_for(lambda: next((r for r in second.state.runs(project) if r.trigger == "webhook"
                                     and r.status == SUCCEEDED), None), 60, "the webhook job after the restart")
        assert run.inserted == 1  # the task imported while the daemon was down
        assert not client.hexists("apscheduler.jobs", f"webhook-{project}")  # a one-off: gone once run
        assert client.hexists("apscheduler.jobs", f"sync-{project}")
        assert len(second.state.runs(project)) > runs_before
    finally:
        assert second.stop(timeout=30)
    client.close()
