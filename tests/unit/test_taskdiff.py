"""taskdiff: task content, import JSON, in-place ops, restore plans and the checks before a write.
Plain dicts and Arrow tables; no server."""

from __future__ import annotations

from typing import Any

import pytest

from ls_space_sync.changes import stamp_of
from ls_space_sync.records import STAMP_COLUMNS, schema_for, tasks_to_table
from ls_space_sync.taskdiff import (
    ORIGIN_KEY, LabelConfigMismatch, PushError, batch_result_names, batch_stamps, check_label_config, content_hash,
    control_names, import_payload, plan_task_changes, require_results, result_names, task_ops,
)

CONFIG = ('<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
          '<Choice value="a"/><Choice value="b"/></Choices></View>')


def choice(v: str, name: str = "label") -> list[dict[str, Any]]:
    return [{"from_name": name, "to_name": "text", "type": "choices", "value": {"choices": [v]}}]


def task(tid: int, text: str, label: str | None = None, *, created: str = "2026-11-01T12:00:00Z",
         updated: str = "2026-11-01T12:00:00Z", **extra: Any) -> dict[str, Any]:
    """A Label Studio task as a full listing returns it."""
    anns = [{"id": 100 + tid, "result": choice(label), "completed_by": 1, "was_cancelled": False,
             "ground_truth": False, "created_at": created, "updated_at": updated}] if label else []
    return {"id": tid, "data": {"text": text}, "meta": {}, "created_at": created, "updated_at": updated,
            "total_annotations": len(anns), "cancelled_annotations": 0, "total_predictions": 0,
            "annotations": anns, "predictions": [], **extra}


def stored(tasks: list[dict[str, Any]]) -> dict[tuple[int, Any], tuple[Any, dict[str, Any]]]:
    """``{(id, created_at): (stamp columns, row)}`` as the restore reads a stored version."""
    table = tasks_to_table(tasks, schema_for(["text"]), "run-x")
    stamps = table.select(STAMP_COLUMNS).to_pylist()
    return {(s["id"], s["created_at"]): (s, row) for s, row in zip(stamps, table.to_pylist())}


def test_task_ops_are_empty_for_equal_content_whatever_ids_authors_and_times():
    task = {"data": {"text": "x"}, "meta": {}, "annotations": [{"result": choice("a"), "completed_by": 2}],
            "predictions": [{"result": choice("b"), "score": 0.5, "model_version": "m"}]}
    desired = import_payload(task, {"source_id": 1}, users={1})
    current = {"id": 9, "data": {"text": "x"}, "meta": {ORIGIN_KEY: {"source_id": 5}},
               "annotations": [{"id": 3, "result": choice("a"), "completed_by": {"id": 1}, "ground_truth": False}],
               "predictions": [{"id": 4, "result": choice("b"), "score": 0.5, "model_version": "m"}]}
    assert task_ops(desired, current) == []
    assert content_hash(desired) == content_hash(current) == content_hash(task)


def test_task_ops_keep_equal_annotations_and_update_delete_create_the_rest():
    desired = import_payload({"data": {"text": "y"}, "annotations": [
        {"result": choice("a")}, {"result": choice("b")}, {"result": [], "was_cancelled": True}]}, None, None)
    current = {"data": {"text": "x"}, "meta": {}, "annotations": [
        {"id": 1, "result": choice("b")}, {"id": 2, "result": choice("z")}],
        "predictions": [{"id": 5, "result": choice("a"), "score": 0.1}]}
    ops = task_ops(desired, current)
    assert ops == [
        ("patch_task", {"data": {"text": "y"}, "meta": {}}),
        ("update_annotation", 2, {"result": choice("a"), "was_cancelled": False, "ground_truth": False}),
        ("create_annotation", {"result": [], "was_cancelled": True, "ground_truth": False}),
        ("delete_prediction", 5),
    ]


def test_import_payload_keeps_authors_the_server_knows_and_marks_the_origin():
    task = {"id": 4, "data": {"t": 1}, "meta": {"k": 1, ORIGIN_KEY: {"old": True}},
            "annotations": [{"result": [], "completed_by": 2, "lead_time": 3.0}, {"result": [], "completed_by": 9}]}
    body = import_payload(task, {"source_id": 4}, users={1, 2})
    assert body["meta"] == {"k": 1, ORIGIN_KEY: {"source_id": 4}}
    assert [a.get("completed_by") for a in body["annotations"]] == [2, None]
    assert body["annotations"][0]["lead_time"] == 3.0


def test_label_config_check_names_the_missing_controls():
    assert control_names(CONFIG) == {"label"}
    check_label_config(CONFIG, {"label"}, 3)
    with pytest.raises(LabelConfigMismatch, match=r"no control tag named box, ner"):
        check_label_config(CONFIG, {"label", "ner", "box"}, 3)


def test_content_ignores_ids_authors_times_counters_origin_and_order():
    a = task(1, "x", "a", meta={"k": 1})
    b = task(9, "x", "a", created="2027-01-01T00:00:00Z", updated="2027-01-02T00:00:00Z",
             meta={"k": 1, ORIGIN_KEY: {"source_id": 1}}, total_annotations=7)
    b["annotations"][0]["completed_by"] = {"id": 5}
    assert content_hash(a) == content_hash(b)
    two = {**a, "annotations": [{"result": choice("a")}, {"result": choice("b")}]}
    assert content_hash(two) == content_hash({**a, "annotations": list(reversed(two["annotations"]))})
    assert content_hash(a) != content_hash(task(1, "x", "b", meta={"k": 1}))
    assert content_hash(a) != content_hash({**a, "meta": {"k": 2}})
    assert content_hash(a) != content_hash({**a, "annotations": [{**a["annotations"][0], "ground_truth": True}]})


def test_results_and_their_control_names():
    t = {"annotations": [{"result": choice("a")}], "predictions": [{"result": choice("b", name="other")}]}
    assert result_names(t) == {"label", "other"}
    require_results(t)
    with pytest.raises(PushError, match="stored task 4 has annotations without a result"):
        require_results({"id": 4, "annotations": [{"id": 1, "completed_by": 1}]})
    with pytest.raises(PushError, match="not valid XML"):
        control_names("<View><Choices name='x' toName='y'>")


def test_batch_stamps_and_result_names_read_arrow_columns_as_the_task_functions_do():
    tasks = [task(1, "x", "a", updated="2026-11-01T12:00:05.123456Z"), task(2, "y"),
             {**task(3, "z"), "predictions": [{"id": 7, "result": choice("b", name="other"), "score": 0.5}],
              "total_predictions": 1}]
    batch = tasks_to_table(tasks, schema_for(["text"]), "run-x").to_batches()[0]
    assert batch_stamps(batch) == [stamp_of(t) for t in tasks]
    assert batch_result_names(batch, [0, 1, 2]) == set().union(*map(result_names, tasks)) == {"label", "other"}
    assert batch_result_names(batch, [1]) == set()
    trimmed = {**task(4, "w"), "annotations": [{"id": 8, "completed_by": 1}], "total_annotations": 1}
    batch = tasks_to_table([trimmed], schema_for(["text"]), None).to_batches()[0]
    with pytest.raises(PushError, match="stored task 4 has annotations without a result"):
        batch_result_names(batch, [0])


def test_plan_task_changes_creates_updates_in_place_and_deletes():
    wanted = [task(1, "one", "a"), task(2, "two", "a"), task(3, "three"), task(4, "four")]
    current = [
        task(1, "one", "a", updated="2026-11-02T00:00:00Z"),  # stamp moved, content equal: nothing
        task(2, "two", "b", updated="2026-11-02T00:00:00Z"),  # relabelled: update in place
        task(3, "three"),  # untouched
        task(9, "nine", created="2026-11-03T00:00:00Z"),  # not in the version: delete
    ]  # task 4 is gone: create
    create, update, delete = plan_task_changes(stored(wanted), stored(current))
    assert [t["id"] for t in create] == [4]
    assert [(w["id"], h["id"]) for w, h in update] == [(2, 2)]
    assert update[0][0]["annotations"][0]["result"] == choice("a")
    assert delete == [9]


def test_plan_task_changes_keeps_a_task_restored_earlier_under_a_new_id():
    wanted = [task(1, "one", "a"), task(2, "two")]
    # Task 2 was deleted and restored once: it came back as task 5; a reused id 2 with another
    # created_at is another task, so it goes and task 2 is not imported a second time.
    current = [task(1, "one", "a"), task(5, "two", created="2026-11-05T00:00:00Z"),
               task(2, "other", created="2026-11-06T00:00:00Z")]
    create, update, delete = plan_task_changes(stored(wanted), stored(current))
    assert (create, update, delete) == ([], [], [2])
    assert plan_task_changes(stored(wanted), stored(wanted)) == ([], [], [])
