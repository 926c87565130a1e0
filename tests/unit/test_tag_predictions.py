"""``/ml/<secret>/tag/<tag>``: stored annotations at a tag as predictions (the in-memory Label
Studio for the syncs, a real daemon and store; the real server's round trip is in
tests/integration/test_tag_predictions.py)."""

from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient

from ls_space_sync.pull.run import Syncer
from ls_space_sync.read.predictions import AmbiguousTag, TagNotFound, as_predictions, created_micros, resolve_tag
from ls_space_sync.service.daemon import Daemon
from ls_space_sync.service.http import create_app, project_of
from ls_space_sync.store.state import PushLink
from tests.fakes import choice
from tests.unit.test_daemon import make_settings

SECRET = "unit-webhook-secret"


@pytest.fixture
def served(tmp_path, fake):
    """Project 1 synced twice (run-000001: task a with 2 annotations, task b with a skip; run-000002
    adds task c), then ``(daemon, client)``."""
    a = fake.add("a", annotations=2)
    fake.tasks[a["id"]]["annotations"][1]["ground_truth"] = True
    b = fake.import_task(1, {"data": {"text": "b"}, "annotations": [{"result": [], "was_cancelled": True}]})
    settings = make_settings(tmp_path, server={"webhook_secret": SECRET})
    with Syncer(settings) as syncer:
        assert syncer.run_once(1).tag == "run-000001"
        fake.add("c", annotations=1)
        assert syncer.run_once(1).tag == "run-000002"
    d = Daemon(settings)
    d.scheduler.start(paused=True)
    client = TestClient(create_app(d))
    yield d, client, fake.tasks[a["id"]], fake.tasks[b["id"]]
    client.close()
    d.stop(timeout=5)


def predict(client, tag, tasks, project="1.1764000000", prefix=""):
    return client.post(f"/ml/{SECRET}{prefix}/tag/{tag}/predict", json={"tasks": tasks, "project": project})


def test_each_task_gets_its_annotations_at_the_tag_in_the_request_order(served, fake):
    d, client, a, b = served
    c = max(fake.tasks.values(), key=lambda t: t["id"])
    r = predict(client, "run-000001", [c, b, a])
    assert r.status_code == 200
    body = r.json()
    assert body["model_version"] == "run-000001"
    no_c, no_b, of_a = body["results"]
    assert no_c == [] and no_b == []  # c came after the tag; b's only annotation is a skip
    assert [p["result"] for p in of_a] == [choice("a"), choice("a")]
    assert {p["model_version"] for p in of_a} == {"run-000001"} and {p["score"] for p in of_a} == {None}
    # At the later tag c has its annotation.
    assert len(predict(client, "run-000002", [c]).json()["results"][0]) == 1
    setup = client.post(f"/ml/{SECRET}/tag/run-000001/setup", json={"project": "1.1764000000"})
    assert setup.json() == {"model_version": "run-000001"}
    assert client.get(f"/ml/{SECRET}/tag/run-000001/health").json()["status"] == "UP"


def test_a_task_whose_id_was_reused_gets_nothing(served):
    d, client, a, b = served
    other = {**a, "created_at": "2030-01-01T00:00:00.000000Z"}  # same id, another task
    assert predict(client, "run-000001", [other]).json()["results"] == [[]]


def test_a_push_target_maps_ids_through_the_links(served):
    d, client, a, b = served
    with d.state.Session.begin() as s:
        s.add(PushLink(source_project=1, source_id=a["id"], source_created=created_micros(a["created_at"]),
                       target_project=7, target_id=501, target_created=created_micros("2026-12-01T00:00:00Z")))
    target_task = {"id": 501, "created_at": "2026-12-01T00:00:00Z", "project": 7}
    r = predict(client, "run-000001", [target_task, {"id": 502}], project="7.1764000000")
    assert [len(p) for p in r.json()["results"]] == [2, 0]
    # A target task that is not the linked one (its created_at differs) gets nothing.
    stranger = {**target_task, "created_at": "2026-12-02T00:00:00Z"}
    assert predict(client, "run-000001", [stranger], project="7.0").json()["results"] == [[]]
    assert predict(client, "run-000001", [target_task], project="7.0", prefix="/source/1").json()["results"][0]
    assert predict(client, "run-000001", [target_task], project="7.0", prefix="/source/3").status_code == 404


def test_a_missing_tag_or_project_is_refused_with_the_fix(served):
    d, client, a, b = served
    r = client.post(f"/ml/{SECRET}/tag/run-000042/setup", json={"project": "1.1764000000"})
    assert r.status_code == 404 and "ls-space-sync tags" in r.json()["detail"]
    assert predict(client, "run-000042", [a]).status_code == 404
    assert client.post(f"/ml/{SECRET}/tag/run-000001/predict", json={"tasks": [{"id": 1}]}).status_code == 422
    assert client.post(f"/ml/{SECRET}/tag/run-000001/predict", json={"project": "1.0"}).status_code == 422
    assert client.post("/ml/wrong/tag/run-000001/predict", json={"tasks": [a], "project": "1.0"}).status_code == 401


def test_a_tag_two_linked_projects_hold_must_be_named(served, tmp_path):
    d, client, a, b = served
    root = d.settings.resolved_store_root
    shutil.copytree(f"{root}/project-1.lance", f"{root}/project-2.lance")
    with d.state.Session.begin() as s:
        for source in (1, 2):
            s.add(PushLink(source_project=source, source_id=a["id"], target_project=7, target_id=501))
    with pytest.raises(AmbiguousTag, match="/source/1/tag/run-000001"):
        resolve_tag(root, d.state, 7, "run-000001")
    assert resolve_tag(root, d.state, 7, "run-000001", source=2).source_id == 2
    with pytest.raises(TagNotFound):
        resolve_tag(root, d.state, 7, "run-000009")
    assert predict(client, "run-000001", [{"id": 501}], project="7.0").status_code == 409


def test_helpers():
    assert project_of({"project": "12.1764000000"}) == 12
    assert project_of({"tasks": [{"id": 1, "project": 4}]}) == 4
    assert project_of({"project": "x"}) is None
    assert created_micros("1970-01-01T00:00:01.000002Z") == 1_000_002
    assert created_micros("1970-01-01T01:00:00+01:00") == 0
    assert created_micros(None) is None and created_micros("soon") is None
    anns = [{"id": 3, "result": '[{"x": 1}]', "ground_truth": False, "was_cancelled": False},
            {"id": 9, "result": "[]", "ground_truth": True, "was_cancelled": False},
            {"id": 1, "result": "[]", "ground_truth": False, "was_cancelled": True}]
    assert [p["result"] for p in as_predictions(anns, "t")] == [[], [{"x": 1}]]  # ground truth first
