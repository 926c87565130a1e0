"""Exports: JSONL/Parquet round trips, one row per region, Hugging Face datasets, PyTorch iterables."""

from __future__ import annotations

import json
import operator
import sys

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from ls_space_sync.read import export
from ls_space_sync.cli.console import main
from ls_space_sync.model.records import schema_for, tasks_to_table
from ls_space_sync.store.dataset import ProjectStore

SCHEMA = schema_for(["text", "image"])
T0 = "2026-01-01T00:00:00.000001Z"


def item(item_id, result, **extra):
    return {"id": item_id, "created_at": T0, "updated_at": T0, "result": result, **extra}


CHOICE = {"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": ["pos"]}}
SPAN = {"id": "s1", "from_name": "ner", "to_name": "text", "type": "labels",
        "value": {"start": 0, "end": 5, "text": "Alice", "labels": ["PER"]}}
BOX = {"id": "b1", "from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": 640,
       "value": {"x": 10.5, "y": 20, "width": 30, "height": 40.25, "rotation": 0, "rectanglelabels": ["Car"]}}


def task(task_id, annotations=(), predictions=()):
    return {"id": task_id, "project": 3, "inner_id": task_id, "created_at": T0, "updated_at": T0,
            "data": {"text": f"Alice {task_id}", "image": f"/data/{task_id}.jpg"}, "meta": {"source": "unit"},
            "is_labeled": bool(annotations), "total_annotations": len(annotations), "cancelled_annotations": 0,
            "total_predictions": len(predictions), "annotations": list(annotations), "predictions": list(predictions),
            "drafts": []}


TASKS = [
    task(1, [item(11, [CHOICE, SPAN], completed_by=7, lead_time=3.5, was_cancelled=False, ground_truth=False)],
         [item(101, [BOX], model_version="yolo", score=0.9)]),
    task(2, [item(21, [BOX], completed_by=8, lead_time=1.0, was_cancelled=False, ground_truth=True)]),
    task(3),
] + [task(i) for i in range(4, 40)]


@pytest.fixture
def store(tmp_path):
    store = ProjectStore(tmp_path / "data" / "datasets", 3)
    # Several commits, so the version has several fragments (for the worker split).
    for start in range(0, len(TASKS), 10):
        table = tasks_to_table(TASKS[start:start + 10], SCHEMA, f"r{start}")
        version, _ = store.commit(pa.RecordBatchReader.from_batches(SCHEMA, table.to_batches()), [],
                                  {"run_id": f"r{start}"})
        store.tag(f"run-{start + 1:06d}", version)
    return store


def test_jsonl_round_trips_task_json(store, tmp_path):
    path = tmp_path / "tasks.jsonl"
    assert export.write_jsonl(store.dataset(), path) == len(TASKS)
    got = sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda t: t["id"])
    assert got == TASKS


def test_parquet_has_the_stored_rows(store, tmp_path):
    path = tmp_path / "tasks.parquet"
    ds = store.dataset()
    assert export.write_parquet(ds, path) == len(TASKS)
    assert pq.read_table(path).sort_by("id").equals(ds.to_table().sort_by("id"))
    assert export.write_parquet(ds, tmp_path / "some.parquet", where="is_labeled") == 2


def test_one_row_per_region(store):
    rows = [r for b in export.region_batches(store.dataset()) for r in b.to_pylist()]
    assert [(r["task_id"], r["item_id"], r["type"]) for r in rows] == [
        (1, 11, "choices"), (1, 11, "labels"), (2, 21, "rectanglelabels")]
    choice, span, box = rows
    assert (choice["label"], choice["labels"], choice["author"], choice["source"]) == ("pos", ["pos"], 7, "annotation")
    assert (span["label"], span["start"], span["end"], span["text"]) == ("PER", 0, 5, "Alice")
    assert (box["label"], box["x"], box["y"], box["width"], box["height"]) == ("Car", 10.5, 20.0, 30.0, 40.25)
    assert json.loads(box["value"])["rotation"] == 0
    assert json.loads(box["data_json"]) == {"text": "Alice 2", "image": "/data/2.jpg"}
    preds = [r for b in export.region_batches(store.dataset(), source="predictions") for r in b.to_pylist()]
    assert [(p["item_id"], p["model_version"], p["author"], p["label"]) for p in preds] == [(101, "yolo", None, "Car")]


def test_hugging_face_dataset(store, tmp_path):
    tasks = export.to_hf_dataset(store.dataset())
    assert isinstance(tasks, datasets.Dataset)
    assert tasks.num_rows == len(TASKS) and tasks.column_names == store.dataset().schema.names
    first = sorted(tasks, key=lambda r: r["id"])[0]
    assert first["data"] == {"text": "Alice 1", "image": "/data/1.jpg"}
    assert first["annotations"][0]["completed_by"] == 7
    regions = export.to_hf_dataset(store.dataset(), regions=True, columns=["task_id", "label"])
    assert regions.to_list() == [{"task_id": 1, "label": "pos"}, {"task_id": 1, "label": "PER"},
                                 {"task_id": 2, "label": "Car"}]
    assert export.save_hf(store.dataset(), tmp_path / "hf", regions=True) == 3
    assert datasets.load_from_disk(str(tmp_path / "hf")).num_rows == 3


def test_torch_iterable_yields_each_task_once(store):
    it = export.torch_iterable(store.dataset("run-000011"))
    assert isinstance(it, torch.utils.data.IterableDataset)
    assert sorted((t for t in it), key=lambda t: t["id"]) == TASKS[:20]
    loader = torch.utils.data.DataLoader(
        # itemgetter: picklable without importing this test module in the spawned workers
        export.torch_iterable(store.dataset(), transform=operator.itemgetter("id", "total_annotations")),
        batch_size=None, num_workers=2,
        multiprocessing_context="spawn",
    )
    got = sorted(tuple(x) for x in loader)  # default_convert turns tuples into lists
    assert got == sorted((t["id"], t["total_annotations"]) for t in TASKS)
    regions = list(export.torch_iterable(store.dataset(), regions=True, where="id = 2"))
    assert [(r["task_id"], r["label"]) for r in regions] == [(2, "Car")]


def test_missing_extra_names_it(store, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(export.MissingExtra, match=r"pip install 'ls-space-sync\[hf\]'"):
        export.to_hf_dataset(store.dataset())
    with pytest.raises(export.MissingExtra, match=r"pip install 'ls-space-sync\[torch\]'"):
        export.torch_iterable(store.dataset())


def test_cli_export(store, tmp_path):
    data_dir = str(store.root.parent)
    runner = CliRunner()
    out = runner.invoke(main, ["--data-dir", data_dir, "export", "-p", "3", "--tag", "run-000001", "--format", "jsonl",
                               "-o", str(tmp_path / "t.jsonl")])
    assert out.exit_code == 0, out.output
    assert "wrote 10 tasks of project 3" in out.output
    assert [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()] == TASKS[:10]
    out = runner.invoke(main, ["--data-dir", data_dir, "export", "-p", "3", "--regions", "-o", str(tmp_path / "r.parquet")])
    assert out.exit_code == 0, out.output
    assert pq.read_table(tmp_path / "r.parquet").schema.equals(export.REGION_SCHEMA)
    bad = runner.invoke(main, ["--data-dir", data_dir, "export", "-p", "3", "--where", "no_such_column > 1",
                               "-o", str(tmp_path / "x.parquet")])
    assert bad.exit_code == 1 and "export failed" in bad.output
