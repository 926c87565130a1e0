"""A stored tag inside Label Studio: a project connected to ``/ml/<secret>/tag/<tag>`` gets, on
each task, its annotations at that tag as predictions (``model_version`` the tag); a push target
gets its source's, ids mapped through the push links. Against the real server: Label Studio
itself calls /setup and /predict (Data Manager "Retrieve Predictions")."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from ls_space_sync.pull.run import Syncer
from ls_space_sync.push import ORIGIN_KEY, push
from ls_space_sync.quickstart.localserver import free_port
from ls_space_sync.service.http import serve
from ls_space_sync.settings import load_settings
from ls_space_sync.store.dataset import ProjectStore
from tests.integration.test_service import CONFIG, SECRET, config_file, wait_for

pytestmark = pytest.mark.integration


def choice(value: str) -> list[dict]:
    return [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [value]}}]


def canonical(results) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in results)


def stored_at(store: ProjectStore, tag: str) -> dict[int, list[str]]:
    """``{task id: canonical results of its annotations that were not cancelled}`` at the tag."""
    table = store.dataset(tag).to_table(columns=["id", "annotations"])
    return {row["id"]: canonical(json.loads(a["result"]) for a in row["annotations"] or [] if not a["was_cancelled"])
            for row in table.to_pylist()}


def predictions_of(ls_client, project: int, model_version: str) -> dict[int, list[str]]:
    out: dict[int, list] = {}
    for p in ls_client.predictions.list(project=project):
        if p.model_version == model_version:
            out.setdefault(p.task, []).append(p.result)
    return {task: canonical(results) for task, results in out.items()}


def retrieve_predictions(ls_client, project: int) -> None:
    """The Data Manager action that sends the tasks to the project's ML backend (synchronous here)."""
    ls_client.actions.create(id="retrieve_tasks_predictions", project=project, selected_items={"all": True})


def test_a_connected_project_shows_its_annotations_at_a_tag(tmp_path, label_studio, ls_client, new_project):
    source = new_project(CONFIG, title="tag predictions source")
    ls_client.projects.import_tasks(id=source, request=[{"data": {"text": f"task {i}"}} for i in range(4)])
    t1, t2, t3, t4 = sorted(t.id for t in ls_client.tasks.list(project=source))
    first = ls_client.annotations.create(id=t1, result=choice("pos"))
    ls_client.annotations.create(id=t2, result=choice("neg"))
    ls_client.annotations.create(id=t2, result=choice("pos"))  # two annotations: two predictions
    ls_client.annotations.create(id=t3, result=[], was_cancelled=True)  # a skip: no prediction

    port = free_port()
    cfg = config_file(tmp_path, label_studio, source, port)
    settings = load_settings(cfg, env={})
    with Syncer(settings) as syncer:
        assert syncer.run_once(source).tag == "run-000001"
        # After the tag: edits the tag must not show.
        ls_client.annotations.update(id=first.id, result=choice("neg"))
        ls_client.annotations.create(id=t4, result=choice("neg"))
        assert syncer.run_once(source).tag == "run-000002"
        # A copy of the latest version in another project: its task ids differ, the links map them.
        target = new_project(CONFIG, title="tag predictions target")
        assert push(syncer, source, target_project=target).created == 4
    store = ProjectStore(settings.resolved_store_root, source)
    expected = stored_at(store, "run-000001")
    assert expected[t1] == canonical([choice("pos")]) and len(expected[t2]) == 2 and expected[t3] == []
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(settings,), kwargs={"stop_event": stop}, name="service")
    thread.start()
    try:
        wait_for(lambda: _listening(port), 60, "the service")
        base = f"http://127.0.0.1:{port}/ml/{SECRET}"
        backend = ls_client.ml.create(project=source, url=f"{base}/tag/run-000001", title="run-000001",
                                      is_interactive=False)
        assert ls_client.ml.get(id=backend.id).state == "CO"  # connected: /health and /setup answered
        retrieve_predictions(ls_client, source)
        got = predictions_of(ls_client, source, "run-000001")
        assert got == {tid: results for tid, results in expected.items() if results}
        assert t4 not in got  # annotated only after the tag
        # Asked again, Label Studio skips tasks that have a prediction of this model version: no duplicates.
        retrieve_predictions(ls_client, source)
        assert predictions_of(ls_client, source, "run-000001") == got

        # The push target: the same annotations, on its own task ids.
        ls_client.ml.create(project=target, url=f"{base}/tag/run-000001", title="source run-000001",
                            is_interactive=False)
        retrieve_predictions(ls_client, target)
        on_target = predictions_of(ls_client, target, "run-000001")
        source_of = _source_ids(ls_client, target)
        assert {source_of[tid]: results for tid, results in on_target.items()} == \
               {tid: results for tid, results in expected.items() if results}

        # What Label Studio was answered, asked directly: in the request's order, one list per task.
        tasks = [{"id": t, "created_at": ls_client.tasks.get(id=t).created_at.isoformat()} for t in (t4, t2, t1)]
        r = httpx.post(f"{base}/tag/run-000001/predict", json={"tasks": tasks, "project": f"{source}.0"},
                       timeout=30, trust_env=False)
        assert r.status_code == 200
        body = r.json()
        assert body["model_version"] == "run-000001"
        assert [canonical(p["result"] for p in preds) for preds in body["results"]] == [[], expected[t2], expected[t1]]
        assert all(p["model_version"] == "run-000001" for preds in body["results"] for p in preds)
        missing = httpx.post(f"{base}/tag/run-009999/setup", json={"project": f"{source}.0"}, timeout=30,
                             trust_env=False)
        assert missing.status_code == 404 and "run-009999" in missing.json()["detail"]
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()


def _listening(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2, trust_env=False)
    except httpx.HTTPError:
        return False
    return True


def _source_ids(ls_client, target: int) -> dict[int, int]:
    """``{target task id: source task id}`` from the origin the push writes into each task's meta."""
    out = {}
    for task in ls_client.tasks.list(project=target):
        origin = (task.meta or {}).get(ORIGIN_KEY) or {}
        out[task.id] = int(origin["source_id"])
    return out
