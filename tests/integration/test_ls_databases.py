"""What differs between the Label Studio servers the product supports, checked on the real ones.

Each test runs against Label Studio 1.23.2 on SQLite, 1.23.2 on PostgreSQL and the oldest supported
release (tests/lsserver.py); docs/label-studio-versions.md states the results. These are the
server behaviours the sync relies on (or guards against): id reuse, the order of the key-paged
listing, import ids in request order, microsecond timestamps and the strict ``updated_at`` filter.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from tests.lsserver import database_of, reuses_task_ids

pytestmark = [pytest.mark.integration, pytest.mark.label_studio_servers("sqlite", "postgresql", "oldest")]

CONFIG = '<View><Text name="text" value="$text"/></View>'
MICROSECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture
def api(label_studio):
    with httpx.Client(base_url=label_studio.url, headers={"Authorization": f"Token {label_studio.api_key}"},
                      timeout=60, trust_env=False) as client:
        yield client


def import_texts(api, project: int, texts: list[str]) -> list[int]:
    resp = api.post(f"/api/projects/{project}/import", params={"return_task_ids": "true"},
                    json=[{"data": {"text": t}} for t in texts])
    resp.raise_for_status()
    return resp.json()["task_ids"]


def listing(api, project: int, items: list[dict] | None = None, **params) -> list[dict]:
    query = json.dumps({"filters": {"conjunction": "and", "items": items or []}, "ordering": ["tasks:id"]})
    resp = api.get("/api/tasks/", params={"project": project, "page_size": 1000, "fields": "all", "query": query,
                                          **params})
    resp.raise_for_status()
    return resp.json()["tasks"]


def test_a_task_imported_after_the_newest_was_deleted_gets_its_id_back_only_on_sqlite(label_studio, api,
                                                                                     new_project):
    pid = new_project(CONFIG)
    ids = import_texts(api, pid, ["a", "b", "c"])
    api.delete(f"/api/tasks/{ids[-1]}/").raise_for_status()
    [new] = import_texts(api, pid, ["d"])
    if reuses_task_ids(label_studio):
        assert new == ids[-1]
    else:
        assert database_of(label_studio) == "postgresql"
        assert new > ids[-1]  # a sequence: the deleted id never comes back


def test_import_returns_ids_in_request_order_and_the_listing_is_ordered_by_id(api, new_project):
    pid = new_project(CONFIG)
    texts = [f"t{i}" for i in range(40)]
    ids = import_texts(api, pid, texts)
    # edit the oldest task: on PostgreSQL its row moves to the end of the heap
    api.patch(f"/api/tasks/{ids[0]}/", json={"data": {"text": "t0 edited"}}).raise_for_status()
    tasks = listing(api, pid)
    assert [t["id"] for t in tasks] == sorted(ids)
    by_id = {t["id"]: t["data"]["text"] for t in tasks}
    assert [by_id[i] for i in ids] == ["t0 edited", *texts[1:]]


def test_stamps_carry_microseconds_and_the_updated_at_filter_is_strict(api, new_project):
    pid = new_project(CONFIG)
    first, second = import_texts(api, pid, ["a", "b"])
    api.patch(f"/api/tasks/{second}/", json={"data": {"text": "b edited"}}).raise_for_status()
    tasks = {t["id"]: t for t in listing(api, pid)}
    for task in tasks.values():
        assert MICROSECONDS.match(task["created_at"]) and MICROSECONDS.match(task["updated_at"]), task
    stamp = datetime.fromisoformat(tasks[second]["updated_at"].replace("Z", "+00:00"))
    assert stamp > datetime.fromisoformat(tasks[first]["updated_at"].replace("Z", "+00:00"))

    def after(moment: datetime) -> list[int]:
        value = moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        item = {"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime", "value": value}
        return [t["id"] for t in listing(api, pid, [item], fields="task_only")]

    assert after(stamp) == []
    assert after(stamp - timedelta(microseconds=1)) == [second]


def test_task_data_keys_keep_their_order_only_on_sqlite(label_studio, api, new_project):
    """PostgreSQL keeps JSON fields as ``jsonb``: keys come back shortest first, then bytewise."""
    pid = new_project(CONFIG)
    resp = api.post(f"/api/projects/{pid}/import", params={"return_task_ids": "true"},
                    json=[{"data": {"text": "x", "zeta": 1, "a": {"yy": 2, "b": 1}}}])
    resp.raise_for_status()
    [task] = listing(api, pid)
    assert task["data"] == {"text": "x", "zeta": 1, "a": {"yy": 2, "b": 1}}
    if database_of(label_studio) == "postgresql":
        assert list(task["data"]) == ["a", "text", "zeta"] and list(task["data"]["a"]) == ["b", "yy"]
    else:
        assert list(task["data"]) == ["text", "zeta", "a"] and list(task["data"]["a"]) == ["yy", "b"]
