"""Answers of the wrong shape (issue 10, defect 1) against the in-memory Label Studio (respx).

A 200 whose body is not JSON, or not the shape its endpoint documents, is an error of the
server: retried, then the run fails and the store stays at its last version. It is never an
empty page. And a listing shorter than the project's task count is never committed.
"""

from __future__ import annotations

import httpx
import pytest
import respx

from ls_space_sync.labelstudio.client import MalformedResponse
from ls_space_sync.store.state import FAILED, SUCCEEDED
from ls_space_sync.pull.run import IncompleteListing
from tests.fakes import URL, FakeLabelStudio
from tests.unit.test_sync import make_syncer, stored

WRONG_SHAPES = [b"null", b"[]", b"{}", b'{"garbage": true}', b'{"tasks": null}', b'{"tasks": [1, 2]}']


def fill(fake: FakeLabelStudio, n: int) -> None:
    for i in range(n):
        fake.add(f"t{i}", annotations=i % 2)


def every_attempt(fake: FakeLabelStudio, endpoint: str, first: int, body: bytes, attempts: int = 3) -> None:
    """Serve ``body`` to the ``first``-th request of ``endpoint`` and to each retry of it."""
    for n in range(first, first + attempts):
        fake.body_faults[(endpoint, n)] = body


@pytest.mark.parametrize("body", WRONG_SHAPES)
def test_first_sync_page_of_the_wrong_shape_fails_and_writes_nothing(tmp_path, fake, body):
    fill(fake, 35)  # four pages of 10
    syncer = make_syncer(tmp_path)  # retries: 2 (3 attempts)
    every_attempt(fake, "tasks", 3, body)
    with pytest.raises(MalformedResponse) as err:
        syncer.run_once(1)
    message = str(err.value)
    assert URL in message and "Label Studio" in message and "/api/tasks" in message and "run again" in message
    assert not syncer.store(1).exists()
    assert syncer.state.runs(1)[0].status == FAILED
    # The fault is gone: the next run stores every task.
    result = syncer.run_once(1)
    assert (result.status, result.inserted) == (SUCCEEDED, 35)
    assert stored(syncer) == fake.tasks


def test_a_wrong_shape_once_is_retried_and_the_run_is_exact(tmp_path, fake):
    fill(fake, 35)
    syncer = make_syncer(tmp_path)
    fake.body_faults[("tasks", 3)] = b"null"
    result = syncer.run_once(1)
    assert (result.status, result.inserted) == (SUCCEEDED, 35)
    assert stored(syncer) == fake.tasks


@pytest.mark.parametrize("body", [b'{"garbage": true}', b"[]"])
def test_full_scan_of_the_wrong_shape_deletes_nothing(tmp_path, fake, body):
    fill(fake, 15)
    syncer = make_syncer(tmp_path, full_scan_every=0)
    syncer.run_once(1)
    version = syncer.store(1).version()
    fake.delete(15)  # the count no longer adds up: this run does a full scan
    fake.tick(60)
    served = fake.served["tasks"]
    # The incremental fetch is request served+1; the stamp scan's first page is served+2.
    every_attempt(fake, "tasks", served + 2, body)
    with pytest.raises(MalformedResponse):
        syncer.run_once(1)
    assert syncer.store(1).version() == version and len(stored(syncer)) == 15
    fake.body_faults.clear()
    result = syncer.run_once(1)
    assert (result.deleted, result.full_scan) == (1, True)
    assert stored(syncer) == fake.tasks


def test_incremental_page_of_the_wrong_shape_keeps_the_cursor(tmp_path, fake):
    fill(fake, 5)
    syncer = make_syncer(tmp_path, full_scan_every=0)
    syncer.run_once(1)
    cursor = syncer.state.cursor(1).cursor
    fake.tick(600)
    fake.touch(2, text="edited long before the next run")
    fake.tick(600)
    every_attempt(fake, "tasks", fake.served["tasks"] + 1, b"[]")
    with pytest.raises(MalformedResponse):
        syncer.run_once(1)
    assert syncer.state.cursor(1).cursor == cursor  # the edit is not skipped by a later run
    fake.body_faults.clear()
    result = syncer.run_once(1)
    assert result.updated == 1 and stored(syncer)[2]["data"]["text"] == "edited long before the next run"


@pytest.mark.parametrize("body", [b'{"detail": "x"}', b"null", b'{"id": 1, "task_number": "many"}'])
def test_project_read_of_the_wrong_shape_is_one_clear_error(tmp_path, fake, body):
    fill(fake, 3)
    syncer = make_syncer(tmp_path)
    every_attempt(fake, "project", 1, body)
    with pytest.raises(MalformedResponse, match=r"malformed answer to GET /api/projects/1/ for project 1"):
        syncer.run_once(1)


@pytest.mark.parametrize("body,reason", [(b'{"tasks": [{"id": 1, "data": {"te', "not valid JSON"),
                                          (b'{"tasks": [], "x": "\xff\xfe"}', "not UTF-8")])
def test_unreadable_bodies_are_retried_then_named(tmp_path, fake, body, reason):
    fill(fake, 3)
    syncer = make_syncer(tmp_path)
    fake.body_faults[("tasks", 1)] = body  # once: retried
    assert syncer.run_once(1).inserted == 3
    every_attempt(fake, "tasks", fake.served["tasks"] + 1, body)
    fake.add("new")
    fake.tick(60)
    with pytest.raises(MalformedResponse) as err:
        syncer.run_once(1)
    message = str(err.value)
    assert reason in message and URL in message and "Unterminated" not in message


def test_first_sync_shorter_than_the_task_count_is_refused(tmp_path, fake):
    fill(fake, 12)
    fake.hidden = {11, 12}  # a listing that ends early with a valid-looking page
    syncer = make_syncer(tmp_path)
    with pytest.raises(IncompleteListing, match="returned 10 tasks but the project has 12"):
        syncer.run_once(1)
    assert not syncer.store(1).exists()
    fake.hidden = set()
    assert syncer.run_once(1).inserted == 12


def test_full_scan_shorter_than_the_task_count_deletes_nothing(tmp_path, fake):
    fill(fake, 12)
    syncer = make_syncer(tmp_path, full_scan_every=0)
    syncer.run_once(1)
    fake.hidden = {3, 4, 5}
    fake.tick(60)
    with pytest.raises(IncompleteListing, match="the full scan returned 9 tasks"):
        syncer.run_once(1, full_scan=True)
    assert len(stored(syncer)) == 12 and syncer.store(1).version() == 1


def test_tasks_deleted_while_a_first_sync_lists_do_not_fail_it(tmp_path, fake):
    fill(fake, 12)
    syncer = make_syncer(tmp_path)

    def delete_mid_listing(served: int) -> None:
        if served == 1:
            fake.delete(12)  # gone before the listing reached it; task_number drops with it

    fake.after_tasks = delete_mid_listing
    result = syncer.run_once(1)
    assert (result.status, result.inserted) == (SUCCEEDED, 11)


@pytest.mark.parametrize("body", [b"[]", b"null", b'{"results": null}', b'{"count": 0}'])
def test_a_project_list_of_the_wrong_shape_is_not_no_projects(body):
    """``projects: all`` with a broken listing must fail, not sync nothing with exit 0 (found by
    the random chaos test: a ``[]`` answer to ``GET /api/projects/``)."""
    from ls_space_sync.labelstudio.client import LabelStudioClient

    with respx.mock(assert_all_called=True) as router:
        router.get(f"{URL}/api/projects/").mock(return_value=httpx.Response(200, content=body))
        client = LabelStudioClient(URL, "unit-test-token", retries=1, max_wait=0.01)
        try:
            with pytest.raises(MalformedResponse, match="paginated project list"):
                client.project_ids()
        finally:
            client.close()


def test_an_empty_user_list_is_not_no_users():
    from ls_space_sync.labelstudio.client import LabelStudioClient

    with respx.mock(assert_all_called=True) as router:
        router.get(f"{URL}/api/users/").mock(return_value=httpx.Response(200, json=[]))
        client = LabelStudioClient(URL, "unit-test-token", retries=0)
        try:
            with pytest.raises(MalformedResponse, match="the token's own user"):
                client.user_ids()
        finally:
            client.close()
