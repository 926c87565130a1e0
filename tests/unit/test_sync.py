"""run_once against the in-memory Label Studio (respx): the poll plan, change sets, recovery."""

from __future__ import annotations

import copy
import threading
import time
from datetime import timedelta

import pytest

from ls_space_sync.store.compaction import small_fragments
from ls_space_sync.labelstudio.client import AuthError, LabelStudioClient, NotFound, ServerUnavailable
from ls_space_sync.model.records import table_to_tasks
from ls_space_sync.settings import load_settings
from ls_space_sync.store.state import FAILED, SUCCEEDED
from ls_space_sync.store.dataset import ProjectLocked, project_lock
from ls_space_sync.pull.run import Syncer
from tests.fakes import KEY, URL


def make_syncer(tmp_path, compaction=None, **sync):
    settings = load_settings(
        env={"LABEL_STUDIO_URL": URL, "LABEL_STUDIO_API_KEY": KEY},
        overrides={"data_dir": str(tmp_path), "projects": [1], "sync": {"page_size": 10, "lag_seconds": 5, **sync},
                   "label_studio": {"retries": 2, "retry_max_wait_seconds": 0.01}, "compaction": compaction or {}},
    )
    return Syncer(settings)


def stored(syncer):
    return {t["id"]: t for t in table_to_tasks(syncer.store(1).dataset().to_table())}


def test_first_sync_stores_every_task_losslessly(tmp_path, fake):
    for i in range(25):
        fake.add(f"t{i}", annotations=i % 2, predictions=1)
    syncer = make_syncer(tmp_path)
    result = syncer.run_once(1)
    assert (result.status, result.inserted, result.tag, result.version) == (SUCCEEDED, 25, "run-000001", 1)
    assert stored(syncer) == fake.tasks
    ds = syncer.store(1).dataset("run-000001")
    assert ds.to_table(columns=["data"]).column("data").to_pylist()[0] == {"text": "t0"}
    assert set(ds.to_table(columns=["run_id"]).column("run_id").to_pylist()) == {result.run_id}


def test_unchanged_poll_costs_two_requests_whatever_the_size(tmp_path, fake):
    for i in range(95):  # ten pages of 10
        fake.add(f"t{i}")
    syncer = make_syncer(tmp_path, full_scan_every=0)
    syncer.run_once(1)
    fake.tick(3600)
    fake.calls.clear()
    result = syncer.run_once(1)
    assert result.status == "skipped"
    assert len(fake.calls) == 2  # the project (count + clock) and one empty page of changed tasks
    assert syncer.store(1).version() == 1  # a run that changes nothing commits nothing


def test_changes_are_one_version_with_exact_counts(tmp_path, fake):
    for i in range(12):
        fake.add(f"t{i}")
    syncer = make_syncer(tmp_path, full_scan_every=0)
    syncer.run_once(1)
    fake.tick(60)
    fake.touch(3, text="edited")
    fake.delete(5)
    fake.add("new")
    result = syncer.run_once(1)
    assert (result.inserted, result.updated, result.deleted) == (1, 1, 1)
    assert result.version == 2 and result.full_scan  # the count did not add up: 12 + 1 new != 12
    assert stored(syncer) == fake.tasks
    # the older tag still reads what the server held then
    old = {t["id"] for t in table_to_tasks(syncer.store(1).dataset("run-000001").to_table())}
    assert old == set(range(1, 13))


def test_runs_merge_small_fragments_and_every_tag_still_reads(tmp_path, fake):
    for i in range(6):
        fake.add(f"t{i}")
    syncer = make_syncer(tmp_path, compaction={"max_small_fragments": 3}, full_scan_every=0)
    syncer.run_once(1)
    held = {"run-000001": copy.deepcopy(fake.tasks)}
    for run in range(2, 10):
        fake.tick(60)
        fake.touch(run % 6 + 1, text=f"edit {run}")
        result = syncer.run_once(1)
        assert result.updated == 1
        held[result.tag] = copy.deepcopy(fake.tasks)
        store = syncer.store(1)
        assert small_fragments(store.dataset()) <= 4  # the 3 allowed + the one this run added
        assert store.tags()[result.tag] == store.version()  # the run's own version is the latest
    ds = syncer.store(1).dataset()
    assert len(ds.versions()) > 9  # merges committed versions of their own, untagged
    for tag, tasks in held.items():
        assert {t["id"]: t for t in table_to_tasks(syncer.store(1).dataset(tag).to_table())} == tasks, tag


def test_reused_id_is_a_replace_not_an_update(tmp_path, fake):
    for i in range(3):
        fake.add(f"t{i}")
    syncer = make_syncer(tmp_path, full_scan_every=0)
    syncer.run_once(1)
    fake.tick(60)
    fake.reuse(3, {"data": {"text": "a different task"}})  # SQLite Label Studio hands out max(id)+1 again
    result = syncer.run_once(1)
    assert (result.inserted, result.updated, result.deleted) == (1, 0, 1)
    assert stored(syncer)[3]["data"] == {"text": "a different task"}


def test_counter_change_without_updated_at_is_caught_by_full_scan(tmp_path, fake):
    for i in range(4):
        fake.add(f"t{i}")
    fake.tick(60)  # older than the lag window, so the cheap path will not re-read them
    syncer = make_syncer(tmp_path, full_scan_every=0)
    syncer.run_once(1)
    # bulk import_predictions: total_predictions moves, updated_at does not
    fake.tasks[2]["total_predictions"] = 1
    fake.tasks[2]["predictions"] = [{"id": 9, "model_version": "m2", "score": 0.9, "result": [],
                                     "created_at": fake.tasks[2]["created_at"], "updated_at": fake.tasks[2]["created_at"]}]
    assert syncer.run_once(1).status == "skipped"  # the cheap path cannot see it
    result = syncer.run_once(1, full_scan=True)
    assert (result.updated, result.full_scan) == (1, True)
    assert stored(syncer)[2]["predictions"][0]["model_version"] == "m2"


def test_full_scan_runs_every_n_runs(tmp_path, fake):
    fake.add("t")
    syncer = make_syncer(tmp_path, full_scan_every=3)
    assert syncer.run_once(1).full_scan  # first sync lists everything
    assert not syncer.run_once(1).full_scan
    assert not syncer.run_once(1).full_scan
    assert syncer.run_once(1).full_scan


def test_crash_after_commit_is_recovered_without_writing_twice(tmp_path, fake):
    for i in range(5):
        fake.add(f"t{i}")
    syncer = make_syncer(tmp_path)

    def die():
        raise KeyboardInterrupt("killed between commit and checkpoint")

    with pytest.raises(KeyboardInterrupt):
        syncer.run_once(1, _after_commit=die)
    first = syncer.state.runs(1)[0]
    assert first.status == FAILED  # the in-process handler marked it; a SIGKILL would leave it running
    # Simulate the SIGKILL case: the run is still marked running.
    syncer.state.finish_run(first.run_id, "running", finished_at=None)
    result = syncer.run_once(1)
    assert result.recovered == [first.run_id]
    assert result.status == "skipped"  # nothing was written twice
    runs = {r.run_id: r for r in syncer.state.runs(1)}
    assert runs[first.run_id].status == SUCCEEDED and runs[first.run_id].inserted == 5
    assert syncer.store(1).tags() == {"run-000001": 1}
    assert syncer.store(1).count() == 5


def test_second_writer_is_refused(tmp_path, fake):
    fake.add("t")
    syncer = make_syncer(tmp_path)
    with project_lock(syncer.root, 1):
        with pytest.raises(ProjectLocked, match="already being synced"):
            syncer.run_once(1)


def test_wrong_token_missing_project_and_server_errors(tmp_path, fake):
    fake.add("t")
    client = LabelStudioClient(URL, "wrong-token", retries=1, max_wait=0.01)
    with pytest.raises(AuthError) as err:
        client.project(1)
    assert "wrong-token" not in str(err.value) and "LABEL_STUDIO_API_KEY" in str(err.value)
    syncer = make_syncer(tmp_path)
    with pytest.raises(NotFound, match="project 7 does not exist"):
        syncer.run_once(7)
    assert syncer.state.runs(7)[0].status == FAILED
    fake.fail_next = [503, 502]  # retried, then served
    assert syncer.run_once(1).inserted == 1
    fake.fail_next = [503] * 10
    with pytest.raises(ServerUnavailable):
        syncer.run_once(1)
    assert syncer.store(1).version() == 1  # the store stays at its last good version


def test_project_read_goes_out_with_the_fetch_and_the_signpost_allows_for_it(tmp_path, fake, monkeypatch):
    fake.add("a")
    syncer = make_syncer(tmp_path, full_scan_every=0)
    syncer.run_once(1)
    fake.tick(60)
    fake.touch(1, text="b")
    read = syncer.client.project
    listed = threading.Event()
    overlapped = []

    def slow_read(project_id):  # the project read is answered only once the fetch has been served
        overlapped.append(listed.wait(10))
        time.sleep(0.3)  # and 0.3 s after it
        return read(project_id)

    fake.after_tasks = lambda _n: listed.set()
    monkeypatch.setattr(syncer.client, "project", slow_read)
    fake.calls.clear()
    result = syncer.run_once(1)
    assert result.updated == 1
    assert [c.url.path for c in fake.calls] == ["/api/tasks/", "/api/projects/1/"]  # the fetch did not wait
    assert overlapped == [True]  # the two overlapped: the read was still out when the listing was served
    # Date said fake.now, stamped >= 0.3 s after the fetch was sent: the cursor is taken back by that too.
    cursor = syncer.state.cursor(1).cursor
    assert fake.now - timedelta(seconds=5 + 2) < cursor <= fake.now - timedelta(seconds=5 + 0.3)


def test_project_gone_after_first_sync_fails_the_run_and_keeps_the_store(tmp_path, fake):
    fake.add("a")
    syncer = make_syncer(tmp_path)
    syncer.run_once(1)
    del fake.projects[1]  # project 1 is deleted on the server
    with pytest.raises(NotFound, match="project 1 does not exist"):
        syncer.run_once(1)
    assert syncer.state.runs(1)[0].status == FAILED
    assert syncer.store(1).version() == 1 and syncer.store(1).count() == 1


def test_malformed_task_fails_the_run_and_loses_nothing(tmp_path, fake):
    fake.add("ok")
    syncer = make_syncer(tmp_path)
    syncer.run_once(1)
    fake.tick(60)
    bad = fake.add("bad")
    bad["updated_at"] = "not a time"
    with pytest.raises(ValueError, match="task 2"):
        syncer.run_once(1)
    assert syncer.store(1).count() == 1
    assert syncer.state.runs(1)[0].status == FAILED


def test_fetch_error_is_raised_when_both_requests_fail(tmp_path, fake):
    fake.add("a")
    syncer = make_syncer(tmp_path)
    syncer.run_once(1)
    fake.fail_next = [503] * 20  # both the project read and the fetch keep failing
    with pytest.raises(ServerUnavailable, match="tasks of project 1"):
        syncer.run_once(1)
    assert syncer.store(1).version() == 1


def test_a_run_that_died_leaves_no_staging_file_after_the_next_run(tmp_path, fake):
    """kill -9 before the commit leaves <store>/.staging/<run_id>.arrow (the chaos kill test's find)."""
    from ls_space_sync.pull.run import staging_dir

    fake.add("a")
    syncer = make_syncer(tmp_path)
    dead = syncer.state.start_run(1)  # its process died before committing
    staged = staging_dir(syncer.root) / f"{dead.run_id}.arrow"
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(b"half a page")
    assert syncer.run_once(1).status == SUCCEEDED
    assert not staged.exists()
    assert syncer.state.runs(1)[-1].status == FAILED


def test_runs_of_two_projects_at_once_each_count_only_their_own_requests(tmp_path, fake):
    second = fake.project("second")
    for i in range(25):
        fake.add(f"a{i}")
        fake.add(f"b{i}", project=second)
    serial = {pid: make_syncer(tmp_path / f"serial{pid}").run_once(pid).requests for pid in (1, second)}
    assert all(serial.values())
    fake.after_tasks = lambda _n: time.sleep(0.05)  # every listing takes a while: the two runs' requests interleave
    syncer = make_syncer(tmp_path / "together")  # one client for both runs, as in the daemon
    results: dict[int, object] = {}
    threads = [threading.Thread(target=lambda pid=pid: results.__setitem__(pid, syncer.run_once(pid)))
               for pid in (1, second)]
    calls_before = len(fake.calls)
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert {pid: r.requests for pid, r in results.items()} == serial
    assert {pid: syncer.state.last_run(pid).requests for pid in (1, second)} == serial
    assert len(fake.calls) - calls_before == sum(serial.values())  # and they did overlap: every request counted once
