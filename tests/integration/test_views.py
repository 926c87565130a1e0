"""Materialized views against a real Label Studio: after every sync run and at every tag, each view
refreshed incrementally by the run equals a full recompute of its transform over the source at that
tag; a Python transform that raises fails its view's refresh (recorded, the sync unaffected) and
leaves the previous view version; a changed transform rebuilds its view once."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from ls_space_sync.pull.run import Syncer
from ls_space_sync.settings import load_settings
from ls_space_sync.views import view_store
from ls_space_sync.views.transforms import load

pytestmark = pytest.mark.integration

CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text"><Choice value="pos"/><Choice value="neg"/><Choice value="mid"/></Choices>
  <Labels name="ner" toName="text"><Label value="PER"/><Label value="ORG"/></Labels>
</View>"""
USER_SQL = ("SELECT id AS task_id, CAST(total_predictions AS BIGINT) AS predictions, "
            "CAST(is_labeled AS BOOLEAN) AS labeled FROM tasks")
BROKEN = {"on": False}


def labelled_share(tasks: pa.Table) -> pa.Table:
    """A Python view: per task, its annotation count and how many were cancelled (a test transform)."""
    if BROKEN["on"]:
        raise KeyError("no such field in this batch")
    rows = tasks.select(["id", "annotations"]).to_pylist()
    return pa.table({
        "task_id": pa.array([r["id"] for r in rows], pa.int64()),
        "annotations": pa.array([len(r["annotations"] or []) for r in rows], pa.int64()),
        "cancelled": pa.array([sum(bool(a["was_cancelled"]) for a in r["annotations"] or []) for r in rows], pa.int64()),
    })


def views_for(pid, sql=USER_SQL):
    return [
        {"name": "regions", "project": pid},
        {"name": "annotations", "project": pid},
        {"name": "task_labels", "project": pid},
        {"name": "preds", "project": pid, "sql": sql, "primary_key": ["task_id"]},
        {"name": "share", "project": pid, "python": "tests.integration.test_views:labelled_share",
         "primary_key": ["task_id"]},
    ]


@pytest.fixture
def make_syncer(label_studio, tmp_path):
    made = []

    def make(pid, views):
        settings = load_settings(
            env={"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.api_key},
            overrides={"data_dir": str(tmp_path / "data"), "projects": [pid], "views": views,
                       "sync": {"page_size": 50, "full_scan_every": 1}},
        )
        made.append(Syncer(settings))
        return made[-1]

    yield make
    for syncer in made:
        syncer.close()


def choice(value):
    return {"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [value]}}


def span(label):
    return {"from_name": "ner", "to_name": "text", "type": "labels",
            "value": {"start": 0, "end": 4, "text": "text", "labels": [label]}}


def result(rng):
    out = [choice(rng.choice(["pos", "neg", "mid"]))]
    if rng.random() < 0.5:
        out.append(span(rng.choice(["PER", "ORG"])))
    return out


def assert_views_are_recomputes(syncer, pid, tags):
    for view in syncer.settings.views:
        transform = load(view)
        key = list(transform.primary_key)
        for tag in tags:
            stored = view_store(syncer, view).dataset(tag).to_table()
            expected = transform.apply(syncer.store(pid).dataset(tag).to_table())
            expected = expected.select(stored.column_names).cast(stored.schema)
            order = [(k, "ascending") for k in key]
            assert stored.sort_by(order).to_pylist() == expected.sort_by(order).to_pylist(), \
                f"view {view.name} at {tag} differs from a full recompute"


def random_round(ls_client, pid, rng, ids):
    """A handful of random operations: new tasks (some annotated), annotation edits and deletes,
    cancelled and ground-truth annotations, task deletes, a bulk prediction import."""
    new = [{"data": {"text": f"text {rng.random():.6f}"},
            "annotations": [{"result": result(rng)}] if rng.random() < 0.6 else []} for _ in range(rng.randint(1, 4))]
    ids += ls_client.projects.import_tasks(id=pid, request=new, return_task_ids=True).task_ids
    for task_id in rng.sample(ids, min(len(ids), 3)):
        annotations = ls_client.annotations.list(id=task_id)
        op = rng.choice(["create", "update", "delete", "cancel"])
        if op == "create" or not annotations:
            ls_client.annotations.create(id=task_id, result=result(rng), ground_truth=rng.random() < 0.3)
        elif op == "update":
            ls_client.annotations.update(id=annotations[0].id, result=result(rng))
        elif op == "cancel":
            ls_client.annotations.update(id=annotations[0].id, was_cancelled=True)
        else:
            ls_client.annotations.delete(id=annotations[0].id)
    if rng.random() < 0.6:  # bulk import: moves the counters, not updated_at (a full scan finds it)
        ls_client.projects.import_predictions(id=pid, request=[
            {"task": rng.choice(ids), "result": [choice("pos")], "score": 0.5, "model_version": "bulk"}])
    if len(ids) > 6 and rng.random() < 0.5:
        gone = rng.choice(ids)
        ls_client.tasks.delete(id=gone)
        ids.remove(gone)


def test_views_equal_a_full_recompute_after_every_run_and_at_every_tag(ls_client, new_project, make_syncer):
    pid = new_project(CONFIG)
    rng = random.Random(13)
    ids = ls_client.projects.import_tasks(id=pid, request=[
        {"data": {"text": f"text {i}"}, "annotations": [{"result": result(rng)}] if i % 2 else []}
        for i in range(40)], return_task_ids=True).task_ids
    syncer = make_syncer(pid, views_for(pid))
    first = syncer.run_once(pid)
    assert [(v.view, v.status, v.full) for v in first.views] == [(v["name"], "succeeded", True) for v in views_for(pid)]
    for _ in range(5):
        random_round(ls_client, pid, rng, ids)
        result_ = syncer.run_once(pid)
        if result_.tag is None:  # nothing changed this round
            continue
        assert all(v.status == "succeeded" and not v.full and v.tags == [result_.tag] for v in result_.views), \
            [v.summary() for v in result_.views]
        assert_views_are_recomputes(syncer, pid, [result_.tag])
    assert_views_are_recomputes(syncer, pid, sorted(syncer.store(pid).tags()))
    # Readers: SQL's view_<name> tables at a tag, like the source's.
    from ls_space_sync.read.query import sql

    tag = sorted(syncer.store(pid).tags())[1]
    counted = sql(syncer.root, "SELECT count(*) AS n FROM view_regions", ref=tag).column("n")[0].as_py()
    assert counted == view_store(syncer, syncer.settings.views[0]).dataset(tag).count_rows()


def test_a_failing_python_view_is_recorded_and_never_fails_the_sync(ls_client, new_project, make_syncer):
    pid = new_project(CONFIG)
    ids = ls_client.projects.import_tasks(id=pid, request=[{"data": {"text": f"t{i}"}} for i in range(20)],
                                          return_task_ids=True).task_ids
    syncer = make_syncer(pid, views_for(pid)[4:])
    syncer.run_once(pid)
    view = syncer.settings.views[0]
    before = view_store(syncer, view).dataset().version
    ls_client.annotations.create(id=ids[0], result=[choice("pos")])
    BROKEN["on"] = True
    try:
        run = syncer.run_once(pid)
    finally:
        BROKEN["on"] = False
    assert run.status == "succeeded" and run.tag == "run-000002"
    assert run.views[0].status == "failed" and "KeyError" in run.views[0].error
    assert "no such field in this batch" in run.views[0].error
    assert view_store(syncer, view).dataset().version == before
    recorded = syncer.state.runs(pid, kind="view", limit=1)[0]
    assert recorded.status == "failed" and "no such field in this batch" in recorded.error
    assert syncer.state.last_run(pid).status == "succeeded"  # the pull itself
    retried = syncer.run_once(pid)  # nothing new in Label Studio: the run is skipped, the view retried
    assert retried.status == "skipped"
    assert (retried.views[0].status, retried.views[0].tags) == ("succeeded", ["run-000002"])
    assert_views_are_recomputes(syncer, pid, ["run-000001", "run-000002"])


def test_a_changed_transform_rebuilds_its_view_once(ls_client, new_project, make_syncer):
    pid = new_project(CONFIG)
    ids = ls_client.projects.import_tasks(id=pid, request=[{"data": {"text": f"t{i}"}} for i in range(20)],
                                          return_task_ids=True).task_ids
    make_syncer(pid, views_for(pid)[3:4]).run_once(pid)
    changed = make_syncer(pid, views_for(pid, sql=USER_SQL + " WHERE id % 2 = 0")[3:4])
    rebuilt = changed.run_once(pid)
    assert rebuilt.status == "skipped" and [(v.status, v.full) for v in rebuilt.views] == [("succeeded", True)]
    assert changed.run_once(pid).views == []  # current: nothing to do, nothing recorded
    ls_client.annotations.create(id=ids[2], result=[choice("neg")])
    after = changed.run_once(pid)
    assert [(v.status, v.full, v.tasks) for v in after.views] == [("succeeded", False, 1)]
    assert_views_are_recomputes(changed, pid, sorted(changed.store(pid).tags()))
