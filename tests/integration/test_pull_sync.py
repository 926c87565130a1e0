"""Pull sync against a real Label Studio server: the store must equal the server after every run.

The server's own view is ``GET /api/tasks?project=P&fields=all`` (annotations and predictions as
full objects); the JSON export would list predictions as bare ids (label-studio-facts.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import httpx
import pytest

from ls_space_sync.labelstudio.client import CORE_TASK_FIELDS
from ls_space_sync.model.records import VOLATILE_KEYS, table_to_tasks
from ls_space_sync.settings import load_settings
from ls_space_sync.pull.run import Syncer
from tests.lsserver import reuses_task_ids

pytestmark = [pytest.mark.integration, pytest.mark.label_studio_servers("sqlite", "postgresql", "oldest")]

TEXT_CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text"><Choice value="pos"/><Choice value="neg"/></Choices>
</View>"""
# The shapes of Label Studio's "Object Detection with Bounding Boxes" and "Named Entity Recognition" templates.
BOX_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="label" toName="image"><Label value="Airplane"/><Label value="Car"/></RectangleLabels>
</View>"""
NER_CONFIG = """<View>
  <Labels name="label" toName="text"><Label value="PER"/><Label value="ORG"/></Labels>
  <Text name="text" value="$text"/>
</View>"""


def choice(value):
    return [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [value]}}]


def server_tasks(label_studio, project_id, keys=CORE_TASK_FIELDS):
    """The server's own view of a project's tasks, by id, from ``fields=all`` (no ``include``, so
    nested annotations and predictions are whole): the top-level ``keys`` a sync stores (all keys
    when ``None``), less the request-time ones (``created_ago``: "5 minutes")."""
    top = None if keys is None else set(keys.split(","))
    out, page = {}, 1
    while True:
        params = {"project": project_id, "fields": "all", "page": page, "page_size": 1000}
        resp = httpx.get(f"{label_studio.url}/api/tasks/", headers={"Authorization": f"Token {label_studio.api_key}"},
                         params=params, timeout=60)
        if resp.status_code == 404:
            break
        resp.raise_for_status()
        tasks = resp.json()["tasks"]
        for task in tasks:
            for key in ("annotations", "predictions"):
                for item in task.get(key) or []:
                    for volatile in VOLATILE_KEYS:
                        item.pop(volatile, None)
        out.update((t["id"], t if top is None else {k: v for k, v in t.items() if k in top}) for t in tasks)
        if len(tasks) < 1000:
            break
        page += 1
    return out


def stored_tasks(syncer, project_id, version=None):
    return {t["id"]: t for t in table_to_tasks(syncer.store(project_id).dataset(version).to_table())}


def assert_store_equals_server(syncer, label_studio, project_id):
    server = server_tasks(label_studio, project_id)
    stored = stored_tasks(syncer, project_id)
    assert sorted(stored) == sorted(server)
    for task_id, task in server.items():
        assert stored[task_id] == task, f"task {task_id} differs"
    return server


@pytest.fixture
def make_syncer(label_studio):
    """Factory for syncers on the session server; each is closed after the test."""
    made = []

    def make(tmp_path, project_id, settings=None, **sync):
        settings = settings or load_settings(
            env={"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.api_key},
            overrides={"data_dir": str(tmp_path / "data"), "projects": [project_id],
                       "sync": {"page_size": 7, "full_scan_every": 0, **sync}},
        )
        made.append(Syncer(settings))
        return made[-1]

    yield make
    for syncer in made:
        syncer.close()


def import_text_tasks(ls_client, pid, n, start=0):
    tasks = [
        {"data": {"text": f"text {i}"},
         "annotations": [{"result": choice("pos")}] if i % 2 else [],
         "predictions": [{"result": choice("neg"), "score": 0.25 + i / 100, "model_version": "m1"}]}
        for i in range(start, start + n)
    ]
    return ls_client.projects.import_tasks(id=pid, request=tasks, return_task_ids=True).task_ids


def test_first_sync_then_every_kind_of_change(label_studio, ls_client, new_project, make_syncer, tmp_path):
    pid = new_project(TEXT_CONFIG)
    ids = import_text_tasks(ls_client, pid, 20)
    syncer = make_syncer(tmp_path, pid)

    first = syncer.run_once(pid)
    assert (first.status, first.inserted, first.updated, first.deleted) == ("succeeded", 20, 0, 0)
    before = assert_store_equals_server(syncer, label_studio, pid)

    # Every change that moves updated_at, one of each.
    ann = ls_client.annotations.create(id=ids[0], result=choice("neg"))           # annotation created
    existing = before[ids[1]]["annotations"][0]["id"]
    ls_client.annotations.update(id=existing, result=choice("neg"))               # annotation updated
    ls_client.annotations.delete(id=before[ids[3]]["annotations"][0]["id"])       # annotation deleted
    ls_client.predictions.create(task=ids[4], result=choice("pos"), score=0.9, model_version="m2")  # prediction
    ls_client.tasks.update(id=ids[5], data={"text": "edited"})                    # task data edit
    ls_client.tasks.delete(id=ids[6])                                             # task deleted
    ls_client.tasks.delete(id=ids[7])
    assert ann.id

    second = syncer.run_once(pid)
    assert (second.inserted, second.updated, second.deleted) == (0, 5, 2)
    assert second.version == first.version + 1 and second.tag == "run-000002"
    after = assert_store_equals_server(syncer, label_studio, pid)

    # Reading the older tag returns exactly what the server held at that run.
    assert stored_tasks(syncer, pid, "run-000001") == before
    assert stored_tasks(syncer, pid, second.tag) == after

    third = syncer.run_once(pid)  # nothing changed: nothing committed
    assert third.status == "skipped" and syncer.store(pid).version() == second.version


def test_reused_id_and_bulk_predictions(label_studio, ls_client, new_project, make_syncer, tmp_path):
    pid = new_project(TEXT_CONFIG)
    ids = import_text_tasks(ls_client, pid, 5)
    syncer = make_syncer(tmp_path, pid)
    syncer.run_once(pid)
    old = stored_tasks(syncer, pid)[ids[-1]]

    # Delete the newest task; on SQLite the next import gets the same id for a different task,
    # on PostgreSQL a new one (a sequence).
    ls_client.tasks.delete(id=ids[-1])
    new_ids = import_text_tasks(ls_client, pid, 1, start=100)
    result = syncer.run_once(pid)
    server = assert_store_equals_server(syncer, label_studio, pid)
    assert (result.inserted, result.updated, result.deleted) == (1, 0, 1)  # a replace, not an update
    if reuses_task_ids(label_studio):
        assert new_ids[0] == ids[-1] and server[ids[-1]]["created_at"] != old["created_at"]
    else:
        assert new_ids[0] > ids[-1] and ids[-1] not in server

    # Bulk import_predictions does not move updated_at: only the full scan sees the counters move.
    ls_client.projects.import_predictions(id=pid, request=[
        {"task": ids[0], "result": choice("pos"), "score": 0.7, "model_version": "bulk"}])
    assert server_tasks(label_studio, pid)[ids[0]]["updated_at"] == server[ids[0]]["updated_at"]
    time.sleep(0.1)
    result = syncer.run_once(pid, full_scan=True)
    assert result.full_scan and result.updated == 1
    assert_store_equals_server(syncer, label_studio, pid)


def test_task_fields_all_stores_every_key(label_studio, ls_client, new_project, make_syncer, tmp_path):
    pid = new_project(TEXT_CONFIG)
    import_text_tasks(ls_client, pid, 4)
    syncer = make_syncer(tmp_path, pid, task_fields="all")
    syncer.run_once(pid)
    server = server_tasks(label_studio, pid, keys=None)
    assert "annotators" in next(iter(server.values()))
    assert stored_tasks(syncer, pid) == server


def test_template_projects_with_boxes_and_spans(label_studio, ls_client, new_project, make_syncer, tmp_path):
    box_pid = new_project(BOX_CONFIG)
    ls_client.projects.import_tasks(id=box_pid, request=[{
        "data": {"image": f"https://example.com/img{i}.jpg"},
        "annotations": [{"result": [{"from_name": "label", "to_name": "image", "type": "rectanglelabels",
                                     "original_width": 640, "original_height": 480,
                                     "value": {"x": 10.0 + i, "y": 20.5, "width": 30, "height": 15.25,
                                               "rotation": 0, "rectanglelabels": ["Car"]}}]}],
        "predictions": [{"result": [{"from_name": "label", "to_name": "image", "type": "rectanglelabels",
                                     "value": {"x": 11, "y": 21, "width": 29, "height": 15,
                                               "rectanglelabels": ["Car"]}}], "score": 0.8, "model_version": "yolo"}],
    } for i in range(6)], return_task_ids=True)
    ner_pid = new_project(NER_CONFIG)
    ls_client.projects.import_tasks(id=ner_pid, request=[{
        "data": {"text": "Ada Lovelace worked with Charles Babbage."},
        "annotations": [{"result": [{"from_name": "label", "to_name": "text", "type": "labels",
                                     "value": {"start": 0, "end": 12, "text": "Ada Lovelace", "labels": ["PER"]}}]}],
    } for _ in range(4)], return_task_ids=True)
    for pid, key in ((box_pid, "image"), (ner_pid, "text")):
        syncer = make_syncer(tmp_path / str(pid), pid)
        assert syncer.run_once(pid).status == "succeeded"
        assert_store_equals_server(syncer, label_studio, pid)
        row = syncer.store(pid).dataset().to_table(columns=["data"]).to_pylist()[0]
        assert list(row["data"]) == [key]
        assert syncer.store(pid).label_config() == ls_client.projects.get(id=pid).label_config


def test_killed_between_commit_and_checkpoint_recovers(label_studio, ls_client, new_project, make_syncer, tmp_path):
    pid = new_project(TEXT_CONFIG)
    import_text_tasks(ls_client, pid, 8)
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"label_studio": {"url": label_studio.url}, "projects": [pid],
                                  "data_dir": str(tmp_path / "data")}))
    script = textwrap.dedent(f"""
        import os
        from ls_space_sync.settings import load_settings
        from ls_space_sync.store.dataset import ProjectStore
        from ls_space_sync.pull.run import Syncer
        ProjectStore.tag = lambda self, name, version: os._exit(137)   # SIGKILL-like: no cleanup at all
        Syncer(load_settings({str(config)!r})).run_once({pid})
    """)
    env = {**os.environ, "LABEL_STUDIO_API_KEY": label_studio.api_key}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 137, proc.stderr

    syncer = make_syncer(tmp_path, pid, settings=load_settings(config, env=env))
    dead = syncer.state.runs(pid)[0]
    assert dead.status == "running" and syncer.store(pid).version() == 1 and syncer.store(pid).tags() == {}
    result = syncer.run_once(pid)
    assert result.recovered == [dead.run_id]
    assert result.status == "skipped"  # the data was not written twice
    assert syncer.store(pid).tags() == {"run-000001": 1}
    runs = {r.run_id: r for r in syncer.state.runs(pid)}
    assert (runs[dead.run_id].status, runs[dead.run_id].inserted, runs[dead.run_id].version) == ("succeeded", 8, 1)
    assert_store_equals_server(syncer, label_studio, pid)


def cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "ls_space_sync", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_cli_sync_tags_read_and_errors(label_studio, ls_client, new_project, make_syncer, tmp_path):
    pid = new_project(TEXT_CONFIG)
    import_text_tasks(ls_client, pid, 3)
    config = tmp_path / "config.yaml"
    config.write_text(f"label_studio:\n  url: {label_studio.url}\nprojects: [{pid}]\ndata_dir: {tmp_path / 'd'}\n")
    env = {"LABEL_STUDIO_API_KEY": label_studio.api_key}

    out = cli("--config", str(config), "sync", env=env)
    assert out.returncode == 0, out.stderr
    assert f"project {pid}: run-000001 v1 +3 ~0 -0" in out.stdout
    assert label_studio.api_key not in out.stdout + out.stderr

    tags = cli("--config", str(config), "tags", env=env)
    assert "run-000001" in tags.stdout and "3 tasks" in tags.stdout
    read = cli("--config", str(config), "read", "--project", str(pid), "--tag", "run-000001", env=env)
    lines = [json.loads(x) for x in read.stdout.splitlines()]
    assert sorted(t["id"] for t in lines) == sorted(server_tasks(label_studio, pid))
    runs = cli("--config", str(config), "runs", "--json", env=env)
    assert json.loads(runs.stdout.splitlines()[0])["status"] == "succeeded"

    bad_token = cli("--config", str(config), "sync", env={"LABEL_STUDIO_API_KEY": "wrong-token-123"})
    assert bad_token.returncode == 1 and "rejected the API key" in bad_token.stdout
    assert "wrong-token-123" not in bad_token.stdout + bad_token.stderr
    missing = cli("--config", str(config), "sync", "--project", "999999", env=env)
    assert missing.returncode == 1 and "project 999999 does not exist" in missing.stdout
    config.write_text("projects: [x]\n")
    bad = cli("--config", str(config), "sync", env=env)
    assert bad.returncode == 2 and "projects: must be a list" in bad.stderr and "Traceback" not in bad.stderr
