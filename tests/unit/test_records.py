"""records: task JSON <-> Arrow rows, lossless both ways."""

from __future__ import annotations

import pyarrow as pa
import pytest

from ls_space_sync.model import records as r

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="box" toName="image"><Label value="cat"/></RectangleLabels>
  <Text name="caption" value="$caption"/>
</View>"""

TASK = {
    "id": 7, "project": 2, "inner_id": 7, "data": {"image": "http://x/1.jpg", "caption": "a cat", "extra": [1, 2]},
    "meta": {"k": "v"}, "created_at": "2026-11-21T23:18:32.888580Z", "updated_at": "2026-11-21T23:18:33Z",
    "updated_by": 1, "is_labeled": True, "overlap": 1, "total_annotations": 1, "cancelled_annotations": 0,
    "total_predictions": 1, "comment_count": 0, "unresolved_comment_count": 0, "annotations_ids": "3",
    "drafts": [], "file_upload": None, "last_comment_updated_at": None, "avg_lead_time": 3.25,
    "annotations": [{
        "id": 3, "completed_by": 1, "was_cancelled": False, "ground_truth": True, "lead_time": 3.25,
        "created_at": "2026-11-21T23:18:32.888580Z", "updated_at": "2026-11-21T23:18:32.888580Z",
        "result": [{"id": "r1", "from_name": "box", "to_name": "image", "type": "rectanglelabels",
                    "value": {"x": 10.5, "y": 5, "width": 20, "height": 30, "rectanglelabels": ["cat"]}}],
        "draft_created_at": None, "import_id": None, "last_action": None, "task": 7, "project": 2,
    }],
    "predictions": [{"id": 4, "model_version": "m1", "score": 1, "result": [], "created_at": "2026-11-21T23:18:32Z",
                     "updated_at": "2026-11-21T23:18:32Z", "task": 7}],
}


def test_data_keys_follow_the_label_config():
    assert r.data_keys(CONFIG) == ["image", "caption"]
    assert r.data_keys("<View><Text name='t' value='$text'") == ["text"]  # broken XML: regex fallback
    assert r.data_keys(None) == []


def test_round_trip_is_exact_including_odd_values():
    schema = r.schema_for(r.data_keys(CONFIG))
    table = r.tasks_to_table([TASK], schema, "run-x")
    assert r.table_to_tasks(table) == [TASK]
    # an int score, a non-UTC timestamp and unknown keys survive through extra
    odd = {**TASK, "id": 8, "created_at": "2026-11-21T23:18:32.888580+02:00", "new_key": {"a": 1}}
    assert r.table_to_tasks(r.tasks_to_table([odd], schema, None)) == [odd]
    assert type(r.table_to_tasks(table)[0]["predictions"][0]["score"]) is int


def test_request_time_keys_are_not_stored():
    schema = r.schema_for(["image"])
    with_ago = {**TASK, "annotations": [{**TASK["annotations"][0], "created_ago": "5\u00a0minutes",
                                          "created_username": "a@b.c, 1"}]}
    assert r.table_to_tasks(r.tasks_to_table([with_ago], schema, None)) == [TASK]


def test_typed_columns_hold_what_sql_needs():
    schema = r.schema_for(r.data_keys(CONFIG))
    row = r.tasks_to_table([TASK], schema, "run-x").to_pylist()[0]
    assert row["data"] == {"image": "http://x/1.jpg", "caption": "a cat"}
    assert schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    assert row["created_at"].microsecond == 888580
    ann = row["annotations"][0]
    assert (ann["id"], ann["completed_by"], ann["ground_truth"], ann["lead_time"]) == (3, 1, True, 3.25)
    assert row["predictions"][0]["model_version"] == "m1" and row["run_id"] == "run-x"


def test_tasks_without_annotation_objects_round_trip():
    schema = r.schema_for(["image"])
    task_only = {k: v for k, v in TASK.items() if k not in ("annotations", "predictions")}
    export_style = {**TASK, "predictions": [4]}  # the JSON export lists prediction ids only
    assert r.table_to_tasks(r.tasks_to_table([task_only, export_style], schema, None)) == [task_only, export_style]


@pytest.mark.parametrize("bad", [{"id": "7"}, {"id": 7, "created_at": "x", "updated_at": "y"}, "not a dict"])
def test_malformed_task_is_refused_with_its_id(bad):
    with pytest.raises(r.MalformedTask):
        r.tasks_to_table([bad], r.schema_for([]), None)


def test_region_rows_flatten_boxes():
    rows = r.region_rows(TASK)
    assert len(rows) == 1
    assert (rows[0]["label"], rows[0]["x"], rows[0]["author"], rows[0]["task_id"]) == ("cat", 10.5, 1, 7)
