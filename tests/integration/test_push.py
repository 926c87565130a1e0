"""Push and restore against a real Label Studio server.

Projects are compared through the server's own view, ``GET /api/tasks?project=P&fields=all``:
the JSON export would list predictions as bare ids (label-studio-facts.md).
"""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from ls_space_sync.labelstudio.client import LabelStudioError
from ls_space_sync.push.engine import ORIGIN_KEY, LabelConfigMismatch, PushLink, push
from ls_space_sync.model.records import table_to_tasks
from ls_space_sync.push.restore import apply_restore, plan_restore
from ls_space_sync.settings import load_settings
from ls_space_sync.store.state import SKIPPED
from ls_space_sync.pull.run import Syncer

pytestmark = [pytest.mark.integration, pytest.mark.label_studio_servers("sqlite", "postgresql", "oldest")]

# The default task keys (labelstudio.CORE_TASK_FIELDS names the nested annotation keys too).
TASK_FIELDS = "core"

# Choices and NER spans on a text, rectangle boxes on an image (URLs are never downloaded).
CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text"><Choice value="pos"/><Choice value="neg"/></Choices>
  <Labels name="ner" toName="text"><Label value="PER"/><Label value="ORG"/></Labels>
  <Image name="image" value="$image"/>
  <RectangleLabels name="box" toName="image"><Label value="car"/><Label value="person"/></RectangleLabels>
</View>"""


def regions(i: int, label: str = "pos") -> list[dict]:
    return [
        {"id": f"c{i}", "from_name": "sentiment", "to_name": "text", "type": "choices", "origin": "manual",
         "value": {"choices": [label]}},
        {"id": f"n{i}", "from_name": "ner", "to_name": "text", "type": "labels",
         "value": {"start": 0, "end": 3, "text": "Ada", "labels": ["PER"]}},
        {"id": f"b{i}", "from_name": "box", "to_name": "image", "type": "rectanglelabels", "original_width": 640,
         "original_height": 480, "image_rotation": 0,
         "value": {"x": 10.5 + i, "y": 20.25, "width": 30, "height": 40, "rotation": 0, "rectanglelabels": ["car"]}},
    ]


def server_tasks(label_studio, project_id: int) -> dict[int, dict]:
    """The server's own view of a project's tasks, by id."""
    resp = httpx.get(f"{label_studio.url}/api/tasks/", headers={"Authorization": f"Token {label_studio.api_key}"},
                     params={"project": project_id, "fields": "all", "page_size": 1000}, timeout=60)
    resp.raise_for_status()
    return {t["id"]: t for t in resp.json()["tasks"]}


def author(a: dict) -> int:
    return a["completed_by"]["id"] if isinstance(a["completed_by"], dict) else a["completed_by"]


def view(task: dict) -> dict:
    """What a push must carry over: data, annotations and predictions as the server reports them."""
    return {
        "data": task["data"],
        "meta": {k: v for k, v in (task.get("meta") or {}).items() if k != ORIGIN_KEY},
        "annotations": [(a["result"], a["was_cancelled"], a["ground_truth"], author(a), a["lead_time"])
                        for a in sorted(task["annotations"], key=lambda a: a["id"])],
        "predictions": [(p["result"], p["score"], p["model_version"])
                        for p in sorted(task["predictions"], key=lambda p: p["id"])],
    }


@pytest.fixture
def syncer(label_studio, tmp_path):
    settings = load_settings(
        env={"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.api_key},
        overrides={"data_dir": str(tmp_path / "data"), "sync": {"lag_seconds": 0, "task_fields": TASK_FIELDS}, "push": {"chunk_size": 5}},
    )
    with Syncer(settings) as s:
        yield s


@pytest.fixture
def source(ls_client, new_project, syncer):
    """A project of 12 tasks with choices, spans and boxes (two annotators, a cancelled annotation,
    a ground truth), and predictions; pulled once (tag run-000001)."""
    pid = new_project(CONFIG, title="push source")
    users = syncer.client.user_ids()
    if len(users) < 2:
        syncer.client._raw("a second user", "api/users/", method="POST",
                           json_body={"email": "annotator@example.com", "username": "annotator"})
        users = syncer.client.user_ids()
    second = max(users)
    tasks = []
    for i in range(12):
        annotations = [{"result": regions(i), "ground_truth": i == 0, "lead_time": 2.5 + i,
                        "completed_by": second if i % 2 else min(users)}]
        if i % 4 == 3:
            annotations.append({"result": [], "was_cancelled": True, "ground_truth": False})
        tasks.append({"data": {"text": f"Ada works at Acme ({i})", "image": f"http://images.invalid/{i}.jpg"},
                      "meta": {"batch": i // 6}, "annotations": annotations,
                      "predictions": [{"result": regions(i, "neg"), "score": 0.5 + i / 100, "model_version": f"m{i % 3}"}]})
    syncer.client.import_tasks(pid, tasks)
    assert syncer.run_once(pid).tag == "run-000001"
    return pid


def pairs(label_studio, src: int, dst: int) -> list[tuple[dict, dict]]:
    """(source task, target task) pairs, matched by the origin in the target's meta."""
    a, b = server_tasks(label_studio, src), server_tasks(label_studio, dst)
    assert len(a) == len(b)
    return [(a[t["meta"][ORIGIN_KEY]["source_id"]], t) for t in b.values()]


def test_a_tag_pushed_to_a_new_project_equals_the_source_task_by_task(label_studio, syncer, source, ls_client):
    result = push(syncer, source, version="run-000001", title="pushed copy")
    dst = result.target_project
    try:
        assert (result.created, result.new_project, result.authors_dropped) == (12, True, 0)
        assert ls_client.projects.get(id=dst).label_config == ls_client.projects.get(id=source).label_config
        matched = pairs(label_studio, source, dst)
        for a, b in matched:
            assert view(a) == view(b), f"task {a['id']} -> {b['id']}"
            assert b["meta"][ORIGIN_KEY] == {"dataset": f"project-{source}", "version": 1, "source_project": source,
                                             "source_id": a["id"], "source_created_at": a["created_at"]}
        assert sorted(a["id"] for a, _ in matched) == sorted(server_tasks(label_studio, source))
        # import_tasks returned the new ids in request order: every link of the id map points at the
        # target task that holds its source task
        targets = server_tasks(label_studio, dst)
        with syncer.state.Session() as s:
            links = s.scalars(select(PushLink).where(PushLink.target_project == dst)).all()
        assert len(links) == 12
        assert all(targets[link.target_id]["meta"][ORIGIN_KEY]["source_id"] == link.source_id for link in links)
        # the user list, 12 tasks in chunks of 5, and per chunk the read-back of the new tasks'
        # created_at (their identity: SQLite Label Studio reuses task ids)
        assert result.requests == 1 + 3 + 3
        assert all(link.target_created is not None for link in links)
    finally:
        ls_client.projects.delete(id=dst)


def test_a_second_push_moves_only_changed_tasks_in_place_and_follows_deletes(label_studio, syncer, source,
                                                                             new_project):
    dst = new_project(CONFIG, title="push target")
    push(syncer, source, target_project=dst)
    quiet = push(syncer, source, target_project=dst)
    assert (quiet.status, quiet.unchanged, quiet.requests) == (SKIPPED, 12, 0)

    ids = sorted(server_tasks(label_studio, source))
    first = server_tasks(label_studio, source)[ids[0]]
    syncer.client.update_annotation(first["annotations"][0]["id"], {"result": regions(0, "neg")})
    syncer.client.update_task(ids[1], {"data": {"text": "edited", "image": "http://images.invalid/new.jpg"}})
    syncer.client.delete_tasks(source, [ids[5]])
    syncer.client.import_tasks(source, [{"data": {"text": "new", "image": "http://images.invalid/n.jpg"}}])
    syncer.run_once(source, full_scan=True)
    before = set(server_tasks(label_studio, dst))
    result = push(syncer, source, target_project=dst, delete=True)
    assert (result.created, result.updated, result.deleted, result.unchanged) == (1, 2, 1, 9)
    # project + users, one listing of the 2 changed targets, 2 PATCHes, 1 import and the read-back
    # of its created_at, delete: check + action
    assert result.requests == 9
    after = set(server_tasks(label_studio, dst))
    assert len(after) == 12 and len(before - after) == 1 and len(after - before) == 1  # updated tasks kept ids
    for a, b in pairs(label_studio, source, dst):
        assert view(a) == view(b)


def test_a_label_config_that_lacks_controls_is_named_and_nothing_is_imported(label_studio, syncer, source,
                                                                          new_project):
    dst = new_project('<View><Text name="text" value="$text"/><Choices name="sentiment" toName="text">'
                      '<Choice value="pos"/><Choice value="neg"/></Choices></View>')
    with pytest.raises(LabelConfigMismatch, match="no control tag named box, ner"):
        push(syncer, source, target_project=dst)
    assert server_tasks(label_studio, dst) == {}


def test_an_import_the_server_refuses_passes_its_message_on(label_studio, syncer, source, new_project):
    dst = new_project(CONFIG.replace('value="$text"', 'value="$body"'))
    with pytest.raises(LabelStudioError, match='"body" key is expected in task data'):
        push(syncer, source, target_project=dst)


def test_restore_after_deleting_annotations_equals_the_tagged_version(label_studio, syncer, source):
    ids = sorted(server_tasks(label_studio, source))
    for task_id in ids[:4]:
        for a in syncer.client.task(task_id)["annotations"]:
            syncer.client.delete_annotation(a["id"])
    syncer.client.delete_tasks(source, [ids[6]])
    plan = plan_restore(syncer, source, "run-000001")
    assert (len(plan.create), len(plan.update), len(plan.delete)) == (1, 4, 0)
    done = apply_restore(syncer, plan)
    assert (done.created, done.updated, done.deleted) == (1, 4, 0)
    tagged = sorted((view(t) for t in table_to_tasks(syncer.store(source).dataset("run-000001").to_table())),
                    key=repr)
    assert sorted((view(t) for t in server_tasks(label_studio, source).values()), key=repr) == tagged
    assert not plan_restore(syncer, source, "run-000001")  # a second restore has nothing to do
