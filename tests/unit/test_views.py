"""Materialized views over a synthetic source (no server): every incremental refresh equals a full
recompute at every tag; failures leave the previous view version; a changed transform rebuilds once."""

from __future__ import annotations

import os
import random
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from ls_space_sync.model.records import data_keys, schema_for, tasks_to_table
from ls_space_sync.settings import ConfigError, load_settings
from ls_space_sync.store.dataset import ProjectStore
from ls_space_sync.views import StoreWorkspace, refresh_project_views, refresh_view, view_store
from ls_space_sync.views.refresh import changed_tasks
from ls_space_sync.views.transforms import load

PID = 7
CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text"><Choice value="pos"/><Choice value="neg"/><Choice value="mid"/></Choices>
  <Labels name="ner" toName="text"><Label value="PER"/></Labels>
</View>"""
SCHEMA = schema_for(data_keys(CONFIG))
T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
USER_SQL = "SELECT id AS task_id, CAST(total_annotations AS BIGINT) AS n, data.text AS text FROM tasks WHERE id % 3 <> 0"
FAIL = {"on": False}


def label_counts(tasks: pa.Table) -> pa.Table:
    """A Python view: per task, how many non-cancelled annotations it has (a test transform)."""
    if FAIL["on"]:
        raise RuntimeError("transform exploded on purpose")
    rows = tasks.select(["id", "annotations"]).to_pylist()
    return pa.table({
        "task_id": pa.array([r["id"] for r in rows], pa.int64()),
        "kept": pa.array([sum(1 for a in r["annotations"] or [] if not a["was_cancelled"]) for r in rows], pa.int64()),
    })


def stray_rows(tasks: pa.Table) -> pa.Table:
    """A broken Python view: rows for a task it was not given."""
    return pa.table({"task_id": pa.array([i + 10**9 for i in tasks.column("id").to_pylist()], pa.int64())})


def ts(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def annotation(ann_id: int, rng: random.Random, when: float) -> dict:
    result = [{"id": f"r{ann_id}", "from_name": "sentiment", "to_name": "text", "type": "choices",
               "value": {"choices": [rng.choice(["pos", "neg", "mid"])]}}]
    if rng.random() < 0.5:
        result.append({"id": f"s{ann_id}", "from_name": "ner", "to_name": "text", "type": "labels",
                       "value": {"start": 0, "end": 3, "text": "Ada", "labels": ["PER"]}})
    return {"id": ann_id, "completed_by": rng.randint(1, 3), "created_at": ts(when), "updated_at": ts(when),
            "lead_time": rng.random() * 30, "was_cancelled": rng.random() < 0.15, "ground_truth": rng.random() < 0.1,
            "result": result if rng.random() < 0.9 else []}


def task(task_id: int, anns: list[dict], when: float, preds: int = 0) -> dict:
    return {"id": task_id, "project": PID, "inner_id": task_id, "created_at": ts(task_id), "updated_at": ts(when),
            "updated_by": None, "data": {"text": f"text {task_id}"}, "meta": {}, "is_labeled": bool(anns),
            "overlap": 1, "total_annotations": len(anns), "cancelled_annotations": 0, "total_predictions": preds,
            "comment_count": 0, "unresolved_comment_count": 0, "annotations": anns,
            "predictions": [{"id": task_id * 10 + p, "model_version": "m", "score": 0.5, "created_at": ts(when),
                             "updated_at": ts(when), "result": []} for p in range(preds)]}


class Source:
    """A project dataset written run by run as a sync writes it (commit, then tag)."""

    def __init__(self, root):
        self.store = ProjectStore(root, PID)
        self.tasks: dict[int, dict] = {}
        self.seq = 0
        self.next_ann = 1
        self.rng = random.Random(5)

    def ann(self, when: float) -> dict:
        self.next_ann += 1
        return annotation(self.next_ann, self.rng, when)

    def run(self, upserts: list[dict], deletes: list[int] = ()) -> int:
        self.seq += 1
        run_id = f"run-{self.seq}"
        for t in upserts:
            self.tasks[t["id"]] = t
        for i in deletes:
            self.tasks.pop(i, None)
        rows = tasks_to_table(upserts, SCHEMA, run_id)
        version, _ = self.store.commit(pa.RecordBatchReader.from_batches(SCHEMA, rows.to_batches()), list(deletes),
                                       {"run_id": run_id})
        self.store.tag(f"run-{self.seq:06d}", version)
        return version

    def random_run(self) -> int:
        """One run of random operations: new tasks, new/edited/removed annotations, deletes, predictions."""
        rng, when = self.rng, self.seq * 1000.0 + 500
        ups: dict[int, dict] = {}
        ids = sorted(self.tasks)
        for _ in range(rng.randint(1, 6)):  # new tasks, some with annotations
            new_id = (max(ids + list(ups)) if ids or ups else 0) + 1
            ups[new_id] = task(new_id, [self.ann(when) for _ in range(rng.randint(0, 3))], when)
        for task_id in rng.sample(ids, min(len(ids), rng.randint(0, 4))):  # annotation edits
            t = dict(self.tasks[task_id])
            anns = list(t["annotations"])
            op = rng.choice(["add", "edit", "remove"])
            if op == "add" or not anns:
                anns.append(self.ann(when))
            elif op == "edit":
                edited = dict(annotation(anns[0]["id"], rng, when), created_at=anns[0]["created_at"])
                anns[0] = edited
            else:
                anns.pop(rng.randrange(len(anns)))
            ups[task_id] = task(task_id, anns, when, preds=len(t["predictions"]))
        for task_id in rng.sample(ids, min(len(ids), rng.randint(0, 2))):  # bulk predictions: counters only
            if task_id not in ups:
                t = self.tasks[task_id]
                ups[task_id] = task(task_id, t["annotations"], float(t["updated_at"] != ""), preds=len(t["predictions"]) + 1)
                ups[task_id]["updated_at"] = t["updated_at"]
        deletes = [i for i in rng.sample(ids, min(len(ids), rng.randint(0, 2))) if i not in ups]
        return self.run(list(ups.values()), deletes)


VIEWS = [
    {"name": "regions", "project": PID},
    {"name": "annotations", "project": PID},
    {"name": "task_labels", "project": PID},
    {"name": "mine", "project": PID, "sql": USER_SQL, "primary_key": ["task_id"]},
    {"name": "kept", "project": PID, "python": "tests.unit.test_views:label_counts", "primary_key": ["task_id"]},
]


def workspace(tmp_path, views=VIEWS):
    settings = load_settings(config_path=os.devnull, env={}, overrides={"data_dir": str(tmp_path / "data"),
                                                                        "views": views})
    return StoreWorkspace(settings)


@pytest.fixture
def ws(tmp_path):
    made = workspace(tmp_path)
    yield made
    made.close()


def rows_by_key(table: pa.Table, key: list[str]) -> list[dict]:
    return table.sort_by([(k, "ascending") for k in key]).to_pylist()


def assert_view_is_recompute(ws, view, ref) -> None:
    """The view at ``ref`` holds exactly the transform of the source at ``ref``."""
    transform = load(view)
    key = list(transform.primary_key)
    source = ws.store(view.project).dataset(ref)
    expected = transform.apply(source.to_table())
    stored = view_store(ws, view).dataset(ref).to_table()
    assert rows_by_key(stored, key) == rows_by_key(expected.select(stored.column_names).cast(stored.schema), key), \
        f"view {view.name} at {ref} differs from a full recompute"


def test_incremental_views_equal_a_full_recompute_at_every_tag(ws):
    src = Source(ws.root)
    src.run([task(i, [src.ann(0) for _ in range(i % 3)], 0) for i in range(1, 80)])  # > 4x a run: incremental
    for round_no in range(6):
        refresh = {r.view: r for r in refresh_project_views(ws, PID)}
        assert set(refresh) == {v.name for v in ws.settings.views}
        assert all(r.status == "succeeded" for r in refresh.values()), [r.summary() for r in refresh.values()]
        assert all(r.full == (round_no == 0) for r in refresh.values())
        for view in ws.settings.views:
            assert_view_is_recompute(ws, view, f"run-{src.seq:06d}")
        src.random_run()
    assert all(r.status == "succeeded" for r in refresh_project_views(ws, PID))
    # Tags never move once written (the view's tags included): every tag still reads its recompute.
    for view in ws.settings.views:
        for tag in ws.store(PID).tags():
            assert_view_is_recompute(ws, view, tag)
    # A refresh of a current view does nothing, and records nothing.
    runs = len(ws.state.runs(PID, kind="view", limit=1000))
    assert all(r.status == "skipped" for r in refresh_project_views(ws, PID))
    assert len(ws.state.runs(PID, kind="view", limit=1000)) == runs


def test_a_view_behind_by_several_runs_catches_up_over_each_tag(ws):
    src = Source(ws.root)
    src.run([task(i, [src.ann(0)], 0) for i in range(1, 80)])
    view = ws.settings.views[0]  # regions
    assert refresh_view(ws, view).full
    for _ in range(3):
        src.random_run()
    result = refresh_view(ws, view)
    assert (result.status, result.full) == ("succeeded", False)
    assert result.tags == ["run-000002", "run-000003", "run-000004"] and len(result.versions) == 3
    for tag in ws.store(PID).tags():
        assert_view_is_recompute(ws, view, tag)


def test_a_failing_python_transform_is_recorded_and_retried(ws):
    view = next(v for v in ws.settings.views if v.name == "kept")
    src = Source(ws.root)
    src.run([task(i, [src.ann(0)], 0) for i in range(1, 80)])
    assert refresh_view(ws, view).status == "succeeded"
    store = view_store(ws, view)
    before = store.dataset().version
    src.random_run()
    FAIL["on"] = True
    try:
        failed = refresh_view(ws, view)
    finally:
        FAIL["on"] = False
    assert failed.status == "failed" and "transform exploded on purpose" in failed.error
    assert "RuntimeError" in failed.error
    assert store.dataset().version == before and "run-000002" not in store.tags()
    recorded = ws.state.runs(PID, kind="view", limit=1)[0]
    assert (recorded.status, recorded.trigger) == ("failed", "kept")
    assert "transform exploded on purpose" in recorded.error
    retried = refresh_view(ws, view)  # the next run retries from the view's last version
    assert (retried.status, retried.full, retried.tags) == ("succeeded", False, ["run-000002"])
    assert_view_is_recompute(ws, view, "run-000002")


def test_a_changed_transform_rebuilds_the_view_once(tmp_path):
    first = workspace(tmp_path, [VIEWS[3]])
    src = Source(first.root)
    src.run([task(i, [src.ann(0)], 0) for i in range(1, 80)])
    assert refresh_view(first, first.settings.views[0]).full
    first.close()
    changed = workspace(tmp_path, [dict(VIEWS[3], sql=USER_SQL.replace("% 3", "% 2"))])
    view = changed.settings.views[0]
    rebuilt = refresh_view(changed, view)
    assert (rebuilt.status, rebuilt.full, rebuilt.tags) == ("succeeded", True, ["run-000001"])
    assert view_store(changed, view).properties(rebuilt.versions[0])["mode"] == "full"
    assert_view_is_recompute(changed, view, "run-000001")  # the tag moved to the rebuilt version
    assert refresh_view(changed, view).status == "skipped"
    src.random_run()
    after = refresh_view(changed, view)
    assert (after.status, after.full) == ("succeeded", False)
    changed.close()


def test_a_transform_that_writes_other_tasks_rows_fails(tmp_path):
    ws = workspace(tmp_path, [{"name": "stray", "project": PID, "python": "tests.unit.test_views:stray_rows",
                               "primary_key": ["task_id"]}])
    src = Source(ws.root)
    src.run([task(i, [], 0) for i in range(1, 10)])
    assert refresh_view(ws, ws.settings.views[0]).status == "succeeded"  # a full rebuild cannot tell
    src.run([task(2, [src.ann(1)], 1)])
    failed = refresh_view(ws, ws.settings.views[0])
    assert failed.status == "failed" and "rows for tasks it was not given" in failed.error
    ws.close()


def test_a_primary_key_that_repeats_fails_and_commits_nothing(tmp_path):
    sql = "SELECT id AS task_id, 1 AS one FROM tasks, range(2)"
    ws = workspace(tmp_path, [{"name": "twice", "project": PID, "sql": sql, "primary_key": ["task_id"]}])
    Source(ws.root).run([task(i, [], 0) for i in range(1, 4)])
    failed = refresh_view(ws, ws.settings.views[0])
    assert failed.status == "failed" and "more than once" in failed.error
    assert not view_store(ws, ws.settings.views[0]).exists()
    ws.close()


def test_changed_tasks_reads_run_ids_across_versions(tmp_path):
    src = Source(tmp_path)
    v1 = src.run([task(i, [], 0) for i in range(1, 6)])
    src.run([task(2, [src.ann(1)], 1)], deletes=[5])
    v3 = src.run([task(6, [], 2), task(3, [src.ann(2)], 2)], deletes=[1])
    ups, dels = changed_tasks(src.store.dataset(v1), src.store.dataset(v3))
    assert (ups, dels) == ([2, 3, 6], [1, 5])
    assert changed_tasks(src.store.dataset(v3), src.store.dataset(v3)) == ([], [])


@pytest.mark.parametrize("view, message", [
    ({"name": "x", "project": 1}, "exactly one of builtin, sql, python"),
    ({"name": "x", "project": 1, "sql": "SELECT 1"}, "needs primary_key"),
    ({"name": "x", "project": 1, "sql": "SELECT 1", "primary_key": ["id"]}, "must start with task_id"),
    ({"name": "x", "project": 1, "python": "no colon", "primary_key": ["task_id"]}, "views.0.python"),
    ({"name": "Bad-Name", "project": 1}, "views.0.name"),
])
def test_bad_view_settings_name_the_key(tmp_path, view, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(config_path=os.devnull, env={}, overrides={"views": [view]})


def test_view_names_are_unique():
    with pytest.raises(ConfigError, match="unique"):
        load_settings(config_path=os.devnull, env={}, overrides={"views": [{"name": "regions", "project": 1},
                                                                           {"name": "regions", "project": 2}]})


def test_builtin_regions_normalise_geometry(ws):
    src = Source(ws.root)
    t = task(1, [src.ann(0)], 0)
    t["annotations"][0]["result"] = [{"id": "b", "from_name": "box", "to_name": "img", "type": "rectanglelabels",
                                      "value": {"x": 10, "y": 20, "width": 50, "height": 25, "rotation": 0,
                                                "rectanglelabels": ["Car"]}}]
    src.run([t])
    view = ws.settings.views[0]
    refresh_view(ws, view)
    row = view_store(ws, view).dataset().to_table().to_pylist()[0]
    assert (row["label"], row["x"], row["y"], row["width"], row["height"]) == ("Car", 0.1, 0.2, 0.5, 0.25)
    assert pc.sum(view_store(ws, view).dataset().to_table().column("task_id")).as_py() == 1


def test_a_view_being_refreshed_elsewhere_is_left_to_that_refresh(ws, monkeypatch):
    from ls_space_sync.views import ViewLocked, refresh
    from ls_space_sync.views.store import view_lock

    Source(ws.root).run([task(i, [], 0) for i in range(1, 5)])
    view = ws.settings.views[0]
    monkeypatch.setattr(refresh, "HOOK_WAIT_SECONDS", 0.2)
    with view_lock(ws.root, PID, view.name):
        with pytest.raises(ViewLocked, match="being refreshed"):
            refresh_view(ws, view)
        done = {r.view for r in refresh_project_views(ws, PID)}
    assert view.name not in done and "annotations" in done  # the others went ahead
    assert refresh_view(ws, view).full  # and the next one builds it
