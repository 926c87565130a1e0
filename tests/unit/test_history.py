"""History of a task, an annotation and the label config, read from real temporary datasets."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest
from click.testing import CliRunner

import ls_space_sync.read.history as history_module
from ls_space_sync.cli.console import main
from ls_space_sync.model.records import format_ts, parse_ts, schema_for, tasks_to_table
from ls_space_sync.read.history import UnknownTask, VersionIndex, config_history, task_history
from ls_space_sync.store.compaction import merge_small_fragments
from ls_space_sync.store.dataset import ProjectStore, StoreError

SCHEMA = schema_for(["text"])
T0 = parse_ts("2026-01-01T00:00:00.000001Z")
CONFIG = '<View>\n  <Text name="text" value="$text"/>\n  <Choices name="sentiment" toName="text">\n' \
         '    <Choice value="pos"/>\n  </Choices>\n</View>'


def at(minutes):
    return format_ts(T0 + timedelta(minutes=minutes))


def annotation(ann_id, value, author=1, created=0, updated=0, updated_by=None):
    out = {"id": ann_id, "completed_by": author, "created_at": at(created), "updated_at": at(updated),
           "lead_time": 1.0, "was_cancelled": False, "ground_truth": False,
           "result": [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [value]}}]}
    if updated_by is not None:
        out["updated_by"] = updated_by
    return out


def prediction(pred_id, value, model="m1"):
    return {"id": pred_id, "model_version": model, "score": 0.5, "created_at": at(0), "updated_at": at(0),
            "result": [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [value]}}]}


def task(task_id, annotations=(), predictions=(), created=0, updated=0, text=None, updated_by=None):
    return {"id": task_id, "project": 3, "inner_id": task_id, "created_at": at(created), "updated_at": at(updated),
            "updated_by": updated_by, "data": {"text": text or f"text {task_id}"}, "meta": {},
            "is_labeled": bool(annotations), "total_annotations": len(annotations), "cancelled_annotations": 0,
            "total_predictions": len(predictions), "comment_count": 0, "annotations": list(annotations),
            "predictions": list(predictions)}


class Runs:
    """Commit tasks as sync runs do: one tagged version per run, ``run_id`` on rows and version."""

    def __init__(self, store, merge_over=None, legacy_ids=False):
        self.store, self.seq, self.merge_over, self.legacy_ids = store, 0, merge_over, legacy_ids
        self.ids = []

    def __call__(self, tasks, deletes=(), config=CONFIG):
        self.seq += 1
        if self.merge_over:
            merge_small_fragments(self.store, self.merge_over, target_rows=10_000)
        # As store.state names runs (start time first), or a name without a time (found by reading every version).
        run_id = f"r{self.seq}" if self.legacy_ids else f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}Z-p3-{self.seq:08x}"
        self.ids.append(run_id)
        table = tasks_to_table(tasks, SCHEMA, run_id)
        done = self.store.commit(pa.RecordBatchReader.from_batches(SCHEMA, table.to_batches()), list(deletes),
                                 {"run_id": run_id, "tag": f"run-{self.seq:06d}", "label_config": config,
                                  "counts": json.dumps({"inserted": 0, "updated": len(tasks), "deleted": len(deletes)})})
        assert done is not None
        self.store.tag(f"run-{self.seq:06d}", done[0])
        return done[0]


LIFE = [  # (tasks, deletes, config) per run; task 1 is the one followed
    ([task(1), task(2)], [], CONFIG),                                                         # v1 inserted
    ([task(1, [annotation(11, "pos", author=2, created=1, updated=1)], updated=1)], [], CONFIG),   # annotated by 2
    ([task(1, [annotation(11, "neg", author=2, created=1, updated=2, updated_by=3)], updated=2)], [], CONFIG),  # edited by 3
    ([task(1, [annotation(11, "neg", author=2, created=1, updated=2, updated_by=3)], updated=3, text="edited",
           updated_by=4)], [], CONFIG),                                                       # data edit by 4
    ([task(2, updated=4)], [], CONFIG.replace('value="pos"/>', 'value="pos"/><Choice value="neg"/>')),  # other task; config
    ([task(1, [annotation(11, "neg", author=2, created=1, updated=2, updated_by=3)], [prediction(21, "pos")],
           updated=5, text="edited", updated_by=4)], [], None),                               # prediction added
    ([task(1, [], [prediction(21, "pos")], updated=6, text="edited", updated_by=4)], [], None),  # annotation deleted
    ([task(2, updated=7)], [1], None),                                                        # task 1 deleted
    ([task(1, created=8, updated=8, text="another task")], [], None),                        # id 1 reused
]


@pytest.fixture(params=[False, True], ids=["run-ids", "legacy-run-ids"])
def store(tmp_path, request):
    store = ProjectStore(tmp_path / "datasets", 3)
    runs = Runs(store, legacy_ids=request.param)
    for tasks, deletes, config in LIFE:
        runs(tasks, deletes, config or LIFE[4][2])
    store.run_ids = runs.ids
    return store


def test_task_history_lists_each_step_by_whom(store):
    h = task_history(store, 1)
    ids = dict(enumerate(store.run_ids, start=1))
    got = [(e.version, e.tag, e.run_id, e.kind, e.fields and [f for f in e.fields if f == "data"],
            [(a.kind, a.id, a.by) for a in e.annotations], [(p.kind, p.id, p.by) for p in e.predictions])
           for e in h.entries]
    assert got == [
        (1, "run-000001", ids[1], "inserted", [], [], []),
        (2, "run-000002", ids[2], "updated", [], [("added", 11, 2)], []),
        (3, "run-000003", ids[3], "updated", [], [("changed", 11, 3)], []),
        (4, "run-000004", ids[4], "updated", ["data"], [], []),
        (6, "run-000006", ids[6], "updated", [], [], [("added", 21, "m1")]),
        (7, "run-000007", ids[7], "updated", [], [("removed", 11, 2)], []),
        (8, "run-000008", ids[8], "deleted", [], [], []),
        (9, "run-000009", ids[9], "inserted", [], [], []),
    ]
    assert h.entries[-1].reused_id and not h.entries[0].reused_id
    assert h.entries[-1].task_created_at == at(8) and h.entries[0].task_created_at == at(0)
    assert h.entries[3].updated_by == [4]
    assert all(e.time is not None and e.time.tzinfo is not None for e in h.entries)
    assert h.versions == 9
    text = "\n".join(h.lines())
    assert "v2      run-000002" in text and "annotations +11 by 2" in text and "annotations ~11 by 3" in text
    assert "data by 4" in text and "predictions +21 by m1" in text and "task deleted" in text
    assert "another task with the same id" in text and "id reused" in text
    doc = h.to_json()
    assert doc["entries"][1]["annotations"][0] == {"kind": "added", "id": 11, "by": 2, "created_at": at(1),
                                                   "updated_at": at(1)}
    assert doc["entries"][0]["time"].endswith("Z")
    json.dumps(doc)


def test_annotation_history(store):
    h = task_history(store, 1, annotation_id=11)
    assert [(e.version, e.kind, e.annotations[0].by) for e in h.entries] == [(2, "added", 2), (3, "changed", 3),
                                                                            (7, "removed", 2)]
    with pytest.raises(UnknownTask, match="never held annotation 99"):
        task_history(store, 1, annotation_id=99)


def test_unknown_task_and_missing_dataset(store, tmp_path):
    with pytest.raises(UnknownTask, match="no task 77"):
        task_history(store, 77)
    with pytest.raises(StoreError, match="no dataset yet"):
        task_history(ProjectStore(tmp_path / "datasets", 4), 1)


def test_config_history(store):
    changes = config_history(store)
    assert [(c.version, c.tag, c.run_id) for c in changes] == [(1, "run-000001", store.run_ids[0]),
                                                               (5, "run-000005", store.run_ids[4])]
    assert changes[0].diff.startswith("--- (none)\n+++ v1\n")
    assert '-    <Choice value="pos"/>\n+    <Choice value="pos"/><Choice value="neg"/>\n' in changes[1].diff
    assert changes[1].to_json()["time"].endswith("Z")


def _brute_force(store, task_id):
    """(version, kind) of every change of ``task_id``, by reading every version."""
    out, before = [], None
    for v in sorted(x["version"] for x in store.versions()):
        rows = store.dataset(v).to_table(columns=["created_at", "run_id", "updated_at"],
                                         filter=f"id = {task_id}").to_pylist()
        now = (rows[0]["created_at"], rows[0]["run_id"], rows[0]["updated_at"]) if rows else None
        if now != before:
            if before is not None and (now is None or now[0] != before[0]):
                out.append((v, "deleted"))
            if now is not None:
                out.append((v, "inserted" if before is None or now[0] != before[0] else "updated"))
        before = now
    return out


@pytest.mark.parametrize("small_rows,legacy_ids", [(1_000, False), (3, False), (1_000, True)])
def test_walk_over_merges_finds_what_reading_every_version_finds(tmp_path, monkeypatch, small_rows, legacy_ids):
    # Runs merge small fragments as sync runs do, so old rows move and deleted ones vanish; with
    # small_rows=3 every fragment counts as large and rows are read through a filter instead.
    monkeypatch.setattr(history_module, "_SMALL_FRAGMENT_ROWS", small_rows)
    store = ProjectStore(tmp_path / "datasets", 3)
    runs = Runs(store, merge_over=3, legacy_ids=legacy_ids)
    rng = random.Random(7)
    live = {i: 0 for i in range(1, 9)}
    runs([task(i) for i in live])
    for seq in range(1, 40):
        changed = rng.sample(sorted(live), 2)
        deletes = [i for i in rng.sample(sorted(live), 1) if i not in changed] if seq % 5 == 0 else []
        new = [max(live) + 1] if seq % 4 == 0 else []
        if seq % 9 == 0:  # the newest task is deleted and its id comes back for another task
            newest = max(live)
            deletes, new = [newest], []
            runs([], deletes)
            live.pop(newest)
            live[newest] = seq
            runs([task(newest, created=seq, updated=seq)])
            continue
        for i in new:
            live[i] = seq
        for i in deletes:
            live.pop(i)
        runs([task(i, [annotation(100 + seq, "pos", updated=seq)], created=live[i], updated=seq)
              for i in changed + new if i in live], deletes)
    index = VersionIndex(store)
    assert any(index.get(v).removes for v in index.versions[1:])  # merges happened
    for task_id in range(1, max(live) + 1):
        expected = _brute_force(store, task_id)
        got = [(e.version, e.kind) for e in task_history(store, task_id).entries]
        assert got == expected, task_id


def test_cli_history_and_configs(store):
    data_dir = str(store.root.parent)
    runner = CliRunner()
    out = runner.invoke(main, ["--data-dir", data_dir, "history", "-p", "3", "--task", "1"])
    assert out.exit_code == 0, out.output
    assert out.output.startswith("project 3, task 1: 8 of 9 versions changed it")
    out = runner.invoke(main, ["--data-dir", data_dir, "history", "-p", "3", "--annotation", "11", "--task", "1", "--json"])
    assert out.exit_code == 0, out.output
    assert [e["kind"] for e in json.loads(out.output)["entries"]] == ["added", "changed", "removed"]
    out = runner.invoke(main, ["--data-dir", data_dir, "configs", "-p", "3"])
    assert out.exit_code == 0, out.output
    assert "2 label configs" in out.output and '+    <Choice value="pos"/><Choice value="neg"/>' in out.output
    out = runner.invoke(main, ["--data-dir", data_dir, "configs", "-p", "3", "--json"])
    assert [c["version"] for c in json.loads(out.output)["changes"]] == [1, 5]


def test_cli_errors_are_one_line(store):
    data_dir = str(store.root.parent)
    runner = CliRunner()
    for args, code in ((["history", "-p", "3", "--task", "77"], 1), (["history", "-p", "4", "--task", "1"], 1),
                       (["configs", "-p", "4"], 1), (["history", "-p", "3"], 2),
                       (["history", "-p", "3", "--annotation", "11"], 1)):
        out = runner.invoke(main, ["--data-dir", data_dir, *args])
        assert out.exit_code == code, (args, out.output)
        assert len(out.output.strip().splitlines()) == 1 or "Usage" in out.output, out.output
        assert "Traceback" not in out.output
