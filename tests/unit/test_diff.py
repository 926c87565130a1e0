"""Version diff: tasks inserted/updated/deleted by stamps, then annotation and prediction changes."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone

import pyarrow as pa
import pytest
from click.testing import CliRunner

from ls_space_sync.cli.console import main
from ls_space_sync.errors import BadTime
from ls_space_sync.model.refs import Ref, parse_ref
from ls_space_sync.read.diff import diff_versions, item_changes
from ls_space_sync.model.records import parse_ts, schema_for, tasks_to_table
from ls_space_sync.store.dataset import ProjectStore, StoreError

SCHEMA = schema_for(["text"])
T0 = "2026-01-01T00:00:00.000001Z"


def choice(value):
    return [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [value]}}]


def annotation(ann_id, value, updated=T0):
    return {"id": ann_id, "completed_by": 1, "created_at": T0, "updated_at": updated, "lead_time": 1.0,
            "was_cancelled": False, "ground_truth": False, "result": choice(value)}


def prediction(pred_id, value):
    return {"id": pred_id, "model_version": "m1", "score": 0.5, "created_at": T0, "updated_at": T0,
            "result": choice(value)}


def task(task_id, annotations=(), predictions=(), created=T0, updated=T0, text=None):
    return {"id": task_id, "project": 3, "inner_id": task_id, "created_at": created, "updated_at": updated,
            "data": {"text": text or f"text {task_id}"}, "meta": {}, "is_labeled": bool(annotations),
            "total_annotations": len(annotations), "cancelled_annotations": 0, "total_predictions": len(predictions),
            "comment_count": 0, "annotations": list(annotations), "predictions": list(predictions)}


def commit(store, tasks, deletes=(), run_id="r"):
    table = tasks_to_table(tasks, SCHEMA, run_id)
    version, _ = store.commit(pa.RecordBatchReader.from_batches(SCHEMA, table.to_batches()), list(deletes),
                              {"run_id": run_id})
    return version


V1 = [
    task(1, [annotation(11, "pos"), annotation(12, "pos")]),
    task(2, [annotation(21, "neg")]),
    task(3),
    task(4),
    task(5, [annotation(51, "pos")]),
    task(6),
    task(8),
]
T1 = "2026-01-05T00:00:00.000001Z"
V2 = [
    # annotation 13 created, 11 updated, 12 deleted
    task(1, [annotation(11, "neg", updated=T1), annotation(13, "neg", updated=T1)], updated=T1),
    # a bulk prediction import: counters move, updated_at does not
    task(2, [annotation(21, "neg")], [prediction(201, "pos")]),
    # task data edited
    task(3, updated=T1, text="edited"),
    # id 5 reused by a new task (SQLite Label Studio): same id, other created_at
    task(5, created=T1, updated=T1),
    # rewritten with the same stamp by a later run: comment_count and an untyped key (kept in extra) differ
    {**task(6), "comment_count": 2, "file_upload": "reviews.csv"},
    task(7, updated=T1),
]


@pytest.fixture
def store(tmp_path):
    store = ProjectStore(tmp_path / "datasets", 3)
    store.tag("run-000001", commit(store, V1, run_id="r1"))
    store.tag("run-000002", commit(store, V2, deletes=[4], run_id="r2"))
    return store


def test_parse_ref():
    # The one ref model (model/refs.py): same meanings as the old dict-returning parser.
    assert parse_ref(None).dataset_args() == {"version": None}
    assert parse_ref("latest").dataset_args() == {"version": None}
    assert parse_ref("7") == parse_ref("v7") == parse_ref(7) == Ref(version=7)
    assert parse_ref("run-000002").dataset_args() == {"version": "run-000002"}
    assert parse_ref("@2026-01-01T00:00:00Z").dataset_args() == {"as_of": datetime(2026, 1, 1, tzinfo=timezone.utc)}
    with pytest.raises(BadTime, match="ISO 8601"):
        parse_ref("@yesterday")


def test_diff_between_tags(store):
    d = diff_versions(store, "run-000001", "run-000002")
    assert (d.old.version, d.new.version) == (1, 2)
    assert d.old.tags == ["run-000001"] and d.new.tags == ["run-000002"]
    assert d.inserted == [5, 7]  # the reused id is an insert and a delete
    assert d.deleted == [4, 5]
    by_id = {u.id: u for u in d.updated}
    assert sorted(by_id) == [1, 2, 3, 6]

    one = by_id[1]
    assert [a["id"] for a in one.annotations.added] == [13]
    assert one.annotations.changed == [{"id": 11, "updated_at": T1, "before": T0}]
    assert one.annotations.removed == [{"id": 12, "updated_at": T0}]
    assert not one.predictions
    assert one.fields == ["updated_at"]

    two = by_id[2]
    assert two.predictions.added == [{"id": 201, "updated_at": T0}] and not two.annotations
    assert two.fields == ["total_predictions"]
    assert by_id[3].fields == ["updated_at", "data"]
    assert by_id[6].fields == ["comment_count", "file_upload"]  # extra's keys, by name
    assert d.counts == {"inserted": 2, "updated": 4, "deleted": 2}


def test_diff_is_symmetric_backwards(store):
    d = diff_versions(store, "run-000002", "run-000001")
    assert d.inserted == [4, 5] and d.deleted == [5, 7]
    one = {u.id: u for u in d.updated}[1]
    assert [a["id"] for a in one.annotations.added] == [12]
    assert [a["id"] for a in one.annotations.removed] == [13]


def test_same_version_and_refs_by_number_and_time(store):
    same = diff_versions(store, "run-000002", "latest")
    assert (same.inserted, same.updated, same.deleted) == ([], [], [])
    first_commit = store.versions()[0]["timestamp"]
    by_time = diff_versions(store, "@" + first_commit.isoformat(), "v2", details=False)
    assert by_time.old.version == 1
    assert [u.id for u in by_time.updated] == [1, 2, 3, 6] and not by_time.updated[0].annotations
    with pytest.raises(StoreError, match="no version or tag 'run-000009'"):
        diff_versions(store, "run-000009")


def test_item_changes_treats_reused_annotation_ids_as_remove_and_add():
    old = [{"id": 1, "created_at": parse_ts(T0), "updated_at": parse_ts(T0), "result": "[]"}]
    new = [{"id": 1, "created_at": parse_ts(T1), "updated_at": parse_ts(T1), "result": "[]"}]
    ch = item_changes(old, new)
    assert (ch.added, ch.changed, ch.removed) == ([{"id": 1, "updated_at": T1}], [], [{"id": 1, "updated_at": T0}])
    assert not item_changes(old, copy.deepcopy(old))


def test_diff_reads_only_updated_rows_in_full(store, monkeypatch):
    import ls_space_sync.read.diff as diff_module

    asked = []
    real = diff_module._rows_by_id

    def spy(ds, ids):
        asked.append(list(ids))
        return real(ds, ids)

    monkeypatch.setattr(diff_module, "_rows_by_id", spy)
    diff_versions(store, "run-000001", "run-000002")
    assert asked == [[1, 2, 3, 6], [1, 2, 3, 6]]


def test_cli_diff(store):
    data_dir = str(store.root.parent)
    runner = CliRunner()
    out = runner.invoke(main, ["--data-dir", data_dir, "diff", "-p", "3", "run-000001", "run-000002"])
    assert out.exit_code == 0, out.output
    assert "tasks: +2 inserted  ~4 updated  -2 deleted" in out.output
    assert "updated task 1: fields" in out.output and "annotations +1 ~1 -1 (+13 ~11 -12)" in out.output
    out = runner.invoke(main, ["--data-dir", data_dir, "diff", "-p", "3", "run-000001", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["counts"] == {"inserted": 2, "updated": 4, "deleted": 2}
    assert doc["new"]["ref"] == "latest" and doc["new"]["version"] == 2
    assert doc["updated"][0]["annotations"]["removed"] == [{"id": 12, "updated_at": T0}]
