"""The daemon's scheduler against the in-memory Label Studio (respx): jobs, failures, backoff, stop."""

from __future__ import annotations

import sys
import threading
import time
from datetime import timedelta

import httpx
import pytest
import respx
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import inspect, text

from ls_space_sync.service.daemon import Daemon, make_job_store
from ls_space_sync.settings import ConfigError, load_settings
from ls_space_sync.store.state import FAILED, SKIPPED, SUCCEEDED, StateDB, utcnow
from ls_space_sync.store.dataset import project_lock
from tests.fakes import KEY, URL, FakeLabelStudio


def make_settings(tmp_path, **overrides):
    base = {"data_dir": str(tmp_path), "projects": [1],
            "label_studio": {"retries": 0, "retry_max_wait_seconds": 0.01},
            "sync": {"lag_seconds": 0, "interval_seconds": 10},
            "scheduler": {"jitter_seconds": 0, "max_backoff_seconds": 25, "shutdown_timeout_seconds": 5},
            "compaction": {"interval_seconds": None}}  # the daily default is tested on its own below
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return load_settings(env={"LABEL_STUDIO_URL": URL, "LABEL_STUDIO_API_KEY": KEY}, overrides=base)


@pytest.fixture
def daemons():
    made: list[Daemon] = []

    def make(settings, start="paused"):
        d = Daemon(settings)
        made.append(d)
        if start == "paused":  # jobs added, nothing fires: tests call sync_job themselves
            d.scheduler.start(paused=True)
            if settings.projects != "all":
                d.set_projects(list(settings.projects))
        elif start == "running":
            d.start()
        return d

    yield make
    for d in made:
        d.stop(timeout=5)


def wait_for(predicate, timeout=10.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")


def sample(daemon, name, **labels):
    """The value of one sample of the daemon's metrics, or None."""
    body = daemon.metrics.render()[0].decode()
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name == name and s.labels == {k: str(v) for k, v in labels.items()}:
                return s.value
    return None


def test_one_job_per_project_with_its_own_schedule(tmp_path, fake, daemons):
    settings = make_settings(tmp_path, projects=[1, 2, 3],
                             schedules={2: {"interval_seconds": 30}, 3: {"cron": "*/5 * * * *"}},
                             scheduler={"jitter_seconds": 7, "misfire_grace_seconds": 45})
    d = daemons(settings)
    jobs = {j.id: j for j in d.scheduler.get_jobs()}
    assert set(jobs) == {"sync-1", "sync-2", "sync-3"}  # compaction is off: no compact jobs
    assert jobs["sync-1"].trigger.interval == timedelta(seconds=10)
    assert jobs["sync-2"].trigger.interval == timedelta(seconds=30)
    assert jobs["sync-1"].trigger.jitter == 7
    assert isinstance(jobs["sync-3"].trigger, CronTrigger)
    for job in jobs.values():
        assert (job.max_instances, job.coalesce, job.misfire_grace_time) == (1, True, 45)
    # Interval projects sync at start (within the jitter); cron projects wait for their time.
    assert jobs["sync-1"].next_run_time <= utcnow() + timedelta(seconds=7)


def test_compaction_jobs_only_when_configured(tmp_path, fake, daemons):
    d = daemons(make_settings(tmp_path, projects=[1, 2], compaction={"interval_seconds": 3600}))
    jobs = {j.id: j for j in d.scheduler.get_jobs()}
    assert {"compact-1", "compact-2"} <= set(jobs)
    assert isinstance(jobs["compact-1"].trigger, IntervalTrigger)
    assert jobs["compact-1"].trigger.interval == timedelta(hours=1)


def test_bad_cron_is_a_config_error_naming_the_key(tmp_path, fake, daemons):
    settings = make_settings(tmp_path, schedules={1: {"cron": "every five minutes"}})
    with pytest.raises(ConfigError, match=r"schedules\.1\.cron"):
        daemons(settings)


def test_job_store_choices(tmp_path, monkeypatch):
    state = StateDB(f"sqlite:///{tmp_path / 'state.db'}")
    assert isinstance(make_job_store(make_settings(tmp_path), state), MemoryJobStore)
    assert isinstance(make_job_store(make_settings(tmp_path, scheduler={"job_store": "sql"}), state), SQLAlchemyJobStore)
    monkeypatch.setitem(sys.modules, "redis", None)  # as on a machine without the optional package
    monkeypatch.setitem(sys.modules, "apscheduler.jobstores.redis", None)  # imported by an earlier test
    with pytest.raises(ConfigError, match="pip install redis"):
        make_job_store(make_settings(tmp_path, scheduler={"job_store": "redis://:pw@localhost:6379/2"}), state)
    with pytest.raises(ConfigError, match="memory, sql or a redis"):
        make_job_store(make_settings(tmp_path, scheduler={"job_store": "mongodb://x"}), state)
    state.dispose()


def test_sql_job_store_persists_jobs_in_the_state_database_and_drops_stale_ones(tmp_path, fake, daemons):
    d = daemons(make_settings(tmp_path, projects=[1, 2], scheduler={"job_store": "sql"}))
    d.stop(timeout=5)
    engine = StateDB(make_settings(tmp_path).resolved_state_url).engine
    assert "apscheduler_jobs" in inspect(engine).get_table_names()
    with engine.connect() as conn:
        assert sorted(r[0] for r in conn.execute(text("select id from apscheduler_jobs"))) == ["sync-1", "sync-2"]
    # A restart with another project list keeps the store in step with the config.
    d2 = daemons(make_settings(tmp_path, projects=[2, 3], scheduler={"job_store": "sql"}))
    assert sorted(j.id for j in d2.scheduler.get_jobs()) == ["sync-2", "sync-3"]
    engine.dispose()


def test_scheduled_sync_runs_at_start_and_is_recorded(tmp_path, fake, daemons):
    for i in range(3):
        fake.add(f"t{i}")
    d = daemons(make_settings(tmp_path), start="running")
    run = wait_for(lambda: d.state.last_run(1, status=SUCCEEDED))
    assert (run.trigger, run.inserted, run.tag) == ("schedule", 3, "run-000001")
    health = d.health()
    assert health["status"] == "UP"
    assert health["projects"]["1"]["last_run"]["status"] == SUCCEEDED
    assert health["projects"]["1"]["seconds_since_success"] < 10
    wait_for(lambda: sample(d, "ls_space_sync_runs_total", project=1, trigger="schedule", status="succeeded") == 1)
    assert sample(d, "ls_space_sync_rows_total", project=1, change="inserted") == 3
    assert sample(d, "ls_space_sync_run_duration_seconds_count", project=1) == 1


def test_failures_are_recorded_backed_off_and_never_raised(tmp_path, fake, daemons):
    fake.add("t0")
    d = daemons(make_settings(tmp_path))
    for expected in (10, 20, 25, 25):  # interval * 2**(n-1), capped by max_backoff_seconds
        fake.fail_next = [500]
        before = utcnow()
        assert d.sync_job(1, "schedule") is None
        after = utcnow()
        # The backoff is counted from a moment inside the failed run: bracket it, whatever the load.
        due = d.next_run_time(1)
        assert (due - after).total_seconds() - 0.01 <= expected <= (due - before).total_seconds() + 0.01
    runs = d.state.runs(1)
    assert [r.status for r in runs] == [FAILED] * 4
    assert "HTTP 500" in runs[0].error
    assert d.health()["projects"]["1"]["consecutive_failures"] == 4
    # The server is back: the next run succeeds and the count resets.
    assert d.sync_job(1, "schedule").status == SUCCEEDED
    assert d.status[1].failures == 0
    assert sample(d, "ls_space_sync_runs_total", project=1, trigger="schedule", status="failed") == 4
    assert sample(d, "ls_space_sync_consecutive_failures", project=1) == 0


def test_bad_token_and_unreachable_server_are_failures_too(tmp_path, daemons):
    with respx.mock(assert_all_called=False) as router:
        router.get(url__regex=rf"{URL}/api/projects/2/").mock(side_effect=httpx.ConnectError("refused"))
        FakeLabelStudio().mount(router)  # after: respx tries routes in order
        d = daemons(make_settings(tmp_path, projects=[1, 2], label_studio={"api_key": "wrong-token"}))
        assert d.sync_job(1, "schedule") is None
        assert d.sync_job(2, "schedule") is None
    assert "rejected the API key" in d.state.last_run(1).error
    assert "cannot reach Label Studio" in d.state.last_run(2).error
    assert d.status[1].failures == d.status[2].failures == 1


def test_a_locked_project_is_not_a_failure(tmp_path, fake, daemons):
    d = daemons(make_settings(tmp_path))
    with project_lock(d.syncer.root, 1):  # as if `ls-space-sync sync` were running
        assert d.sync_job(1, "schedule") is None
        assert d.scheduler.get_job("webhook-1") is None
        assert d.sync_job(1, "webhook") is None
    assert d.state.runs(1) == []
    assert d.status[1].failures == 0
    # A requested run that met the lock tries again: the running sync may predate the change.
    assert d.scheduler.get_job("webhook-1") is not None
    assert sample(d, "ls_space_sync_runs_total", project=1, trigger="webhook", status="locked") == 1


def test_a_requested_run_locked_by_this_daemons_own_poll_runs_right_after_it(tmp_path, fake, daemons):
    d = daemons(make_settings(tmp_path))
    with d._slot("schedule-1", 1), project_lock(d.syncer.root, 1):  # this daemon's poll of project 1 is running
        assert d.sync_job(1, "webhook") is None
        assert d.scheduler.get_job("webhook-1") is None  # nothing on a timer: it waits for the poll
    job = d.scheduler.get_job("webhook-1")  # the poll ended: the retry is due now, not 5 s later
    assert job is not None and (job.next_run_time - utcnow()).total_seconds() <= 0.5
    assert list(job.args) == [1, "webhook"]
    assert d.sync_job(1, "webhook") is not None
    assert d.state.last_run(1).trigger == "webhook"


def test_request_sync_is_debounced_and_only_for_synced_projects(tmp_path, fake, daemons):
    d = daemons(make_settings(tmp_path, server={"debounce_seconds": 3}))
    first = d.request_sync(1)
    assert 2.5 < (first - utcnow()).total_seconds() <= 3
    time.sleep(0.05)
    assert all(d.request_sync(1) == first for _ in range(50))  # a pending run absorbs the burst
    assert [j.id for j in d.scheduler.get_jobs() if j.id.startswith("webhook-")] == ["webhook-1"]
    assert d.request_sync(99) is None


def test_stop_lets_the_running_run_finish_and_takes_no_new_ones(tmp_path, fake, daemons):
    fake.add("t0")
    d = daemons(make_settings(tmp_path))
    release = threading.Event()
    inner = d.syncer.run_once

    def slow_run_once(*args, **kwargs):
        release.wait(10)
        return inner(*args, **kwargs)

    d.syncer.run_once = slow_run_once
    worker = threading.Thread(target=d.sync_job, args=(1, "schedule"))
    worker.start()
    wait_for(lambda: d._running)
    stopped = []
    stopper = threading.Thread(target=lambda: stopped.append(d.stop(timeout=10)))
    stopper.start()
    time.sleep(0.3)
    assert stopped == []  # still waiting for the run
    assert d.sync_job(1, "schedule") is None  # stopping: no new runs
    release.set()
    stopper.join(10)
    worker.join(10)
    assert stopped == [True]
    assert d.state.last_run(1).status == SUCCEEDED


def test_stop_gives_up_after_its_timeout(tmp_path, fake, daemons):
    fake.add("t0")
    d = daemons(make_settings(tmp_path))
    release = threading.Event()
    inner = d.syncer.run_once
    d.syncer.run_once = lambda *a, **k: (release.wait(10), inner(*a, **k))[1]
    worker = threading.Thread(target=d.sync_job, args=(1, "schedule"))
    worker.start()
    wait_for(lambda: d._running)
    started = time.monotonic()
    assert d.stop(timeout=0.3) is False
    assert time.monotonic() - started < 8  # gave up at its timeout, not when the 10 s run ended
    release.set()
    worker.join(10)


def test_projects_all_are_discovered_from_the_server(tmp_path, daemons):
    listing = [httpx.Response(200, json={"results": [{"id": 1}, {"id": 4}], "next": None}),
               httpx.Response(503, json={"detail": "down"})]
    with respx.mock(assert_all_called=False) as router:
        router.get(f"{URL}/api/projects/").mock(side_effect=listing)
        FakeLabelStudio().mount(router)
        d = daemons(make_settings(tmp_path, projects="all"))
        d.discover()
        assert d.projects == [1, 4]
        assert {j.id for j in d.scheduler.get_jobs()} == {"sync-1", "sync-4"}
        d.discover()  # the server fails: keep what we know
    assert d.projects == [1, 4]
    assert {j.id for j in d.scheduler.get_jobs()} == {"sync-1", "sync-4"}


def test_stop_waits_for_a_project_listing_before_closing_the_client(tmp_path, daemons):
    """SIGTERM while ``projects: all`` waits on the project list (the chaos daemon test's find: the
    listing's retry then met a closed client and logged a traceback)."""
    gate = threading.Event()

    def slow_listing(request):
        gate.wait(10)
        return httpx.Response(200, json={"results": [{"id": 1}], "next": None})

    with respx.mock(assert_all_called=False) as router:
        router.get(f"{URL}/api/projects/").mock(side_effect=slow_listing)
        FakeLabelStudio().mount(router)
        d = daemons(make_settings(tmp_path, projects="all"))
        errors: list[BaseException] = []

        def discover():
            try:
                d.discover()
            except BaseException as exc:  # noqa: BLE001 - the test reports any
                errors.append(exc)

        worker = threading.Thread(target=discover)
        worker.start()
        wait_for(lambda: d._running)
        threading.Timer(0.3, gate.set).start()
        assert d.stop(timeout=5) is True  # waited for the listing, then closed
        worker.join(10)
    assert errors == [] and d.projects == [1]


def test_skipped_runs_count_as_success(tmp_path, fake, daemons):
    fake.add("t0")
    d = daemons(make_settings(tmp_path))
    assert d.sync_job(1, "schedule").status == SUCCEEDED
    fake.tick(60)
    assert d.sync_job(1, "schedule").status == SKIPPED
    assert d.health()["projects"]["1"]["last_run"]["status"] == SKIPPED


def test_compaction_job_compacts_and_never_raises(tmp_path, fake, daemons, caplog, monkeypatch):
    import ls_space_sync.store.compaction as maintenance

    for i in range(3):
        fake.add(f"t{i}")
    d = daemons(make_settings(tmp_path, compaction={"interval_seconds": 3600, "retention_seconds": 0}))
    d.sync_job(1, "schedule")
    fake.touch(1, text="edit")
    fake.tick(60)
    d.sync_job(1, "schedule")
    calls = []
    real = maintenance.compact_project
    monkeypatch.setattr(maintenance, "compact_project", lambda s, p: calls.append(p) or real(s, p))
    caplog.clear()  # the syncs above may have logged at INFO, depending on earlier tests' logging set-up
    with caplog.at_level("ERROR", logger="ls_space_sync.service.daemon"):
        d.compact_job(1)
    assert calls == [1] and [r for r in caplog.records if r.levelno >= 40] == []
    assert d.syncer.store(1).count() == 3
    assert d.syncer.store(1).tags().keys() >= {"run-000001", "run-000002"}

    def broken(settings, project_id):
        raise RuntimeError("disk full")

    monkeypatch.setattr(maintenance, "compact_project", broken)
    with caplog.at_level("ERROR", logger="ls_space_sync.service.daemon"):
        d.compact_job(1)  # logged, not raised
    assert any("compaction failed: RuntimeError: disk full" in r.getMessage() for r in caplog.records)


# --- mirror pairs ------------------------------------------------------------------------------

MIRRORS = [{"source": 1, "target": 2, "both_ways": True}, {"source": 3, "target": 4}]


def test_a_mirror_pair_runs_on_its_source_schedule_instead_of_the_sync_jobs_of_the_projects_it_pulls(
        tmp_path, fake, daemons):
    settings = make_settings(tmp_path, projects=[1, 2, 3, 4, 5], mirrors=MIRRORS,
                             schedules={1: {"interval_seconds": 30}, 3: {"cron": "*/5 * * * *"}},
                             scheduler={"jitter_seconds": 7})
    d = daemons(settings)
    jobs = {j.id: j for j in d.scheduler.get_jobs()}
    # 1 and 2 are pulled by the both-ways pass, 3 by its one-way pass; 4 (a one-way target) and 5 sync.
    assert set(jobs) == {"mirror-1-2", "mirror-3-4", "sync-4", "sync-5"}
    assert jobs["mirror-1-2"].args == (1, 2, "schedule") and jobs["mirror-1-2"].func.__name__ == "_mirror"
    assert jobs["mirror-1-2"].trigger.interval == timedelta(seconds=30) and jobs["mirror-1-2"].trigger.jitter == 7
    assert isinstance(jobs["mirror-3-4"].trigger, CronTrigger)
    assert all((j.max_instances, j.coalesce) == (1, True) for j in jobs.values())
    assert d.projects == [1, 2, 3, 4, 5]
    assert d.next_run_time(2) == jobs["mirror-1-2"].next_run_time
    assert d.health()["projects"]["2"]["mirrors"] == ["1-2"] and d.health()["projects"]["4"]["mirrors"] == []


def test_a_webhook_for_a_mirrored_project_schedules_its_pass_debounced(tmp_path, fake, daemons):
    d = daemons(make_settings(tmp_path, projects=[5], mirrors=MIRRORS, server={"debounce_seconds": 3}))
    assert d.projects == [1, 2, 3, 5]  # pairs run whether or not their projects are listed; 4 is not pulled
    first = d.request_sync(2)
    assert all(d.request_sync(n) == first for n in (1, 2, 2))  # either side, one pending pass
    job = d.scheduler.get_job("webhook-mirror-1-2")
    assert job.args == (1, 2, "webhook") and job.func.__name__ == "_mirror"
    assert d.request_sync(4) is None  # a one-way target this daemon does not sync
    assert d.request_sync(5) is not None and d.scheduler.get_job("webhook-5") is not None


def test_mirror_passes_are_counted_logged_locked_is_not_a_failure_and_failures_back_off(tmp_path, fake, daemons,
                                                                                       monkeypatch, caplog):
    import ls_space_sync.service.daemon as daemon_module
    from ls_space_sync.labelstudio.client import LabelStudioError
    from ls_space_sync.store.dataset import ProjectLocked
    from ls_space_sync.pull.run import RunResult
    from ls_space_sync.push.engine import PushResult
    from ls_space_sync.push.mirror import MirrorResult

    push = PushResult(1, 2, 1, "p1", created=2, updated=1, deleted=0, echoes=0, conflicts=0)
    outcomes = [
        MirrorResult(1, 2, pulls=["project 1: run-000001 v1 +3 ~0 -0"], pushes=[push], versions=1,
                     moved=3, runs=[RunResult(1, "r1", SUCCEEDED, inserted=3, version=1, tag="run-000001"),
                                    RunResult(2, "r2", SKIPPED)]),
        ProjectLocked("project 1 is being synced by another process"),
        LabelStudioError("Label Studio answered HTTP 502", 502),
        LabelStudioError("Label Studio answered HTTP 502", 502),
    ]
    calls = []

    def fake_mirror_once(syncer, pair):
        calls.append((pair.source, pair.target))
        out = outcomes.pop(0)
        if isinstance(out, Exception):
            raise out
        return out

    monkeypatch.setattr(daemon_module, "mirror_once", fake_mirror_once)
    d = daemons(make_settings(tmp_path, projects=[], mirrors=MIRRORS[:1]))
    with caplog.at_level("INFO", logger="ls_space_sync.service.daemon"):
        assert d.mirror_job(1, 2, "schedule").moved == 3
    assert "mirror 1 -> 2 (both ways): 1 new versions, 3 tasks moved (pull project 1: run-000001 v1 +3 ~0 -0; " \
           "push 1 -> 2: +2 ~1 -0 (0 echoes, 0 conflicts))" in caplog.messages
    passes = "ls_space_sync_mirror_passes_total"
    assert sample(d, passes, source=1, target=2, trigger="schedule", outcome="changed") == 1
    assert sample(d, "ls_space_sync_mirror_tasks_total", source=1, target=2, change="created") == 2
    assert sample(d, "ls_space_sync_runs_total", project=1, trigger="mirror", status="succeeded") == 1
    assert sample(d, "ls_space_sync_rows_total", project=1, change="inserted") == 3
    assert d.health()["mirrors"]["1-2"]["last_pass"]["moved"] == 3

    assert d.mirror_job(1, 2, "webhook") is None  # locked: skipped, retried, not a failure
    assert d.mirror_status["1-2"].failures == 0 and d.scheduler.get_job("webhook-mirror-1-2") is not None
    assert sample(d, passes, source=1, target=2, trigger="webhook", outcome="locked") == 1

    waits = []
    for _ in range(2):
        before = utcnow()
        assert d.mirror_job(1, 2, "schedule") is None
        waits.append(round((d.next_run_time(1) - before).total_seconds()))
    assert waits == [10, 20]  # the pair's job backs off like a project's poll
    health = d.health()
    pair = health["mirrors"]["1-2"]
    assert pair["consecutive_failures"] == 2 and "HTTP 502" in pair["last_error"] and pair["next_run_at"]
    assert health["projects"]["2"]["consecutive_failures"] == 2
    assert sample(d, "ls_space_sync_consecutive_failures", project=2) == 2
    assert d.mirror_job(9, 10, "schedule") is None and len(calls) == 4  # a pair no longer configured: nothing


def test_compaction_is_scheduled_daily_by_default(tmp_path, fake, daemons):
    settings = load_settings(env={"LABEL_STUDIO_URL": URL, "LABEL_STUDIO_API_KEY": KEY},
                             overrides={"data_dir": str(tmp_path), "projects": [1]})
    d = daemons(settings)
    job = d.scheduler.get_job("compact-1")
    assert job is not None and job.trigger.interval.total_seconds() == 86400
