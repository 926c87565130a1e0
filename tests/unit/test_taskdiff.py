"""taskdiff: task content, import JSON, in-place ops, restore plans and the checks before a write.
Plain dicts and Arrow tables; no server."""

from __future__ import annotations

from typing import Any

import pytest

from ls_space_sync.model.changes import stamp_of
from ls_space_sync.model.records import STAMP_COLUMNS, schema_for, tasks_to_table
from ls_space_sync.model.taskdiff import (
    ORIGIN_KEY, LabelConfigMismatch, PushError, annotation_ops, authors_differ, batch_result_names, batch_stamps,
    check_label_config, content_hash, control_names, import_payload, plan_task_changes, plan_task_ops,
    require_results, result_names, sets_ground_truth, task_ops,
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
        ("update_annotation", 2, {"result": choice("a")}),  # only what differs: no flag it does not change
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


# --- ground truth: Label Studio keeps one per task when annotations are written one at a time ---

def ann(aid: int, label: str, gt: bool, **extra: Any) -> dict[str, Any]:
    """A server annotation."""
    return {"id": aid, "result": choice(label), "was_cancelled": False, "ground_truth": gt, "completed_by": 1,
            **extra}


def body(label: str, gt: bool, **extra: Any) -> dict[str, Any]:
    """A desired annotation (an annotation_body)."""
    return {"result": choice(label), "was_cancelled": False, "ground_truth": gt, **extra}


def test_an_edit_next_to_an_imported_ground_truth_sends_no_flag():
    # Issue 10 #2: both annotations were imported without the key, so the server set both flags;
    # the source edited one. A PATCH naming ground_truth=true would clear the other one's flag.
    ops, held = annotation_ops([body("pos", True), body("neutral", True)], [ann(1, "pos", True), ann(2, "neg", True)])
    assert ops == [("update_annotation", 2, {"result": choice("neutral")})]
    assert not sets_ground_truth(ops)
    assert sorted(map(repr, held)) == sorted(map(repr, [body("pos", True), body("neutral", True)]))


def test_a_flag_is_set_or_cleared_on_its_own_annotation_and_only_when_it_changes():
    ops, _ = annotation_ops([body("pos", True), body("neg", False)], [ann(1, "pos", True), ann(2, "neg", True)])
    assert ops == [("update_annotation", 2, {"ground_truth": False})]  # clearing touches no other annotation
    ops, held = annotation_ops([body("pos", False), body("neg", True)], [ann(1, "pos", True), ann(2, "neg", False)])
    # one ground truth wanted: setting it clears the other, which is what is wanted anyway
    assert ops == [("update_annotation", 1, {"ground_truth": False}), ("update_annotation", 2, {"ground_truth": True})]
    assert sets_ground_truth(ops)
    assert [a["ground_truth"] for a in held] == [False, True]


def test_a_flag_that_cannot_be_set_without_clearing_another_is_left_and_reported_in_what_is_held():
    desired = [body("pos", True), body("neg", True)]
    # a lost annotation is created without the flag: with it, the server would clear pos's
    ops, held = annotation_ops(desired, [ann(1, "pos", True)])
    assert ops == [("create_annotation", body("neg", False))] and not sets_ground_truth(ops)
    assert held == [body("pos", True), body("neg", False)]
    # and an annotation that lacks it keeps lacking it: nothing to send, the server's state stands
    ops, held = annotation_ops(desired, [ann(1, "pos", True), ann(2, "neg", False)])
    assert ops == [] and held == [body("pos", True), body("neg", False)]
    task = {"data": {"text": "x"}, "meta": {}, "annotations": desired, "predictions": []}
    ops, after = plan_task_ops(task, {**task, "annotations": [ann(1, "pos", True), ann(2, "neg", False)]})
    assert ops == [] and content_hash(after) != content_hash(task)  # the id map records the server's flags
    # one wanted ground truth can be created: the server clears the others, which want none
    ops, _ = annotation_ops([body("pos", False), body("neg", True)], [ann(1, "pos", False)])
    assert ops == [("create_annotation", body("neg", True))]


def test_pairs_prefer_the_same_result_so_a_flag_change_is_not_a_relabel():
    ops, _ = annotation_ops([body("neg", False), body("pos", False)], [ann(1, "pos", True), ann(2, "neg", False)])
    assert ops == [("update_annotation", 1, {"ground_truth": False})]


def test_with_authors_a_restore_matches_and_sets_completed_by():
    desired = [body("pos", False, completed_by=2), body("neg", False, completed_by=3)]
    current = [ann(1, "pos", False, completed_by=3), ann(2, "neu", False, completed_by={"id": 2})]
    ops, _ = annotation_ops(desired, current, authors=True)
    assert ops == [("update_annotation", 1, {"completed_by": 2}),
                   ("update_annotation", 2, {"result": choice("neg"), "completed_by": 3})]
    # a push leaves authors as they are: content alone decides
    ops, _ = annotation_ops(desired, current)
    assert ops == [("update_annotation", 2, {"result": choice("neg")})]
    # an annotation whose author the server does not know (no completed_by) matches any author
    ops, _ = annotation_ops([body("pos", False)], current[:1], authors=True)
    assert ops == []
    # the one that names its author gets the annotation by that author, the other the rest
    ops, _ = annotation_ops([body("pos", False), body("pos", False, completed_by=3)],
                            [ann(1, "pos", False, completed_by=3), ann(2, "pos", False, completed_by=4)], authors=True)
    assert ops == []


def test_authors_differ_counts_only_users_the_server_has():
    want = {"annotations": [{"result": choice("a"), "completed_by": 2}, {"result": choice("a"), "completed_by": 9}]}
    have = {"annotations": [{"result": choice("a"), "completed_by": 2}, {"result": choice("a"), "completed_by": 1}]}
    assert not authors_differ(want, have, users={1, 2})  # user 9 is gone: any author will do
    assert authors_differ(want, {"annotations": [{"result": choice("a"), "completed_by": {"id": 1}}] * 2}, {1, 2})
    assert plan_task_changes(stored([task(1, "x", "a")]),
                             stored([task(1, "x", "a", updated="2026-11-02T00:00:00Z")]), users={1}) == ([], [], [])
    moved = task(1, "x", "a", updated="2026-11-02T00:00:00Z")
    moved["annotations"][0]["completed_by"] = 2
    _, update, _ = plan_task_changes(stored([task(1, "x", "a")]), stored([moved]), users={1, 2})
    assert [h["id"] for _, h in update] == [1]
    assert plan_task_changes(stored([task(1, "x", "a")]), stored([moved])) == ([], [], [])  # content only
