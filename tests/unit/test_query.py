"""DuckDB SQL over stored datasets: the example queries, versions per table, result files, the CLI."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from ls_space_sync.read import query
from ls_space_sync.cli.console import main
from ls_space_sync.model.records import data_keys, schema_for, tasks_to_table
from ls_space_sync.store.dataset import ProjectStore, StoreError

CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text"><Choice value="pos"/><Choice value="neg"/></Choices>
  <Labels name="ner" toName="text"><Label value="PER"/><Label value="ORG"/></Labels>
  <Rating name="quality" toName="text"/>
</View>"""
SCHEMA = schema_for(data_keys(CONFIG))


def choice(value):
    return {"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [value]}}


def span(label, start, end):
    return {"from_name": "ner", "to_name": "text", "type": "labels",
            "value": {"start": start, "end": end, "text": "x" * (end - start), "labels": [label]}}


def rating(n):
    return {"from_name": "quality", "to_name": "text", "type": "rating", "value": {"rating": n}}


def annotation(ann_id, user, result, lead_time=10.0, cancelled=False):
    return {"id": ann_id, "completed_by": user, "created_at": "2026-01-01T10:00:00.000001Z",
            "updated_at": "2026-01-01T10:00:00.000001Z", "lead_time": lead_time, "was_cancelled": cancelled,
            "ground_truth": False, "result": result}


def task(task_id, annotations, updated="2026-01-02T00:00:00.000001Z"):
    return {"id": task_id, "project": 3, "inner_id": task_id, "created_at": "2026-01-01T00:00:00.000001Z",
            "updated_at": updated, "data": {"text": f"text {task_id}"}, "meta": {}, "is_labeled": bool(annotations),
            "total_annotations": len(annotations), "cancelled_annotations": 0, "total_predictions": 0,
            "annotations": annotations, "predictions": []}


TASKS = [
    # task 1: two annotators agree on pos; one span each
    task(1, [annotation(11, 1, [choice("pos"), span("PER", 0, 3)], 4.0),
             annotation(12, 2, [choice("pos"), span("PER", 0, 3)], 8.0)]),
    # task 2: they disagree; annotator 2 also rates
    task(2, [annotation(21, 1, [choice("pos")], 6.0), annotation(22, 2, [choice("neg"), rating(4)], 20.0)]),
    # task 3: one annotation, and a cancelled one that must not count
    task(3, [annotation(31, 1, [choice("neg")], 2.0), annotation(32, 2, [choice("pos")], 100.0, cancelled=True)]),
    # task 4: no annotations
    task(4, []),
]


def commit(store, tasks, deletes=(), run_id="r"):
    table = tasks_to_table(tasks, SCHEMA, run_id)
    version, _ = store.commit(pa.RecordBatchReader.from_batches(SCHEMA, table.to_batches()), list(deletes),
                              {"run_id": run_id, "label_config": CONFIG})
    return version


@pytest.fixture
def root(tmp_path):
    """A store root with project 3 at two tagged versions (run-000002 adds task 5) and project 4."""
    root = tmp_path / "data" / "datasets"
    store = ProjectStore(root, 3)
    store.tag("run-000001", commit(store, TASKS, run_id="r1"))
    store.tag("run-000002", commit(store, [task(5, [annotation(51, 3, [choice("neg")], 30.0)])], run_id="r2"))
    other = ProjectStore(root, 4)
    other.tag("run-000001", commit(other, [task(100, [])], run_id="r3"))
    return root


def rows(root, sql, **kw):
    return query.sql(root, sql, **kw).to_pylist()


def test_label_distribution_per_control(root):
    got = rows(root, query.example("label-distribution", 3))
    assert got == [
        {"control": "ner", "label": "PER", "regions": 2, "tasks": 1},
        {"control": "quality", "label": "4", "regions": 1, "tasks": 1},
        {"control": "sentiment", "label": "neg", "regions": 3, "tasks": 3},
        {"control": "sentiment", "label": "pos", "regions": 3, "tasks": 2},
    ]


def test_annotations_per_annotator(root):
    got = {r["annotator"]: (r["annotations"], r["cancelled"], r["tasks"])
           for r in rows(root, query.example("annotations-per-annotator", 3))}
    assert got == {1: (3, 0, 3), 2: (3, 1, 3), 3: (1, 0, 1)}


def test_disagreements(root):
    got = rows(root, query.example("disagreements", 3))
    assert got == [{"task_id": 2, "control": "sentiment", "annotations": 2, "distinct_answers": 2,
                    "answers": ["neg", "pos"]}]


def test_lead_time_percentiles(root):
    got = {r["annotator"]: r for r in rows(root, query.example("lead-time", 3))}
    assert list(got) == ["1", "2", "3", "all"]
    assert got["1"]["annotations"] == 3 and got["1"]["p50_seconds"] == 4.0
    assert got["2"]["p50_seconds"] == 14.0  # cancelled 100 s left out: median of 8 and 20
    every = sorted([4.0, 8.0, 6.0, 20.0, 2.0, 30.0])
    assert got["all"]["annotations"] == 6
    assert got["all"]["p50_seconds"] == pytest.approx((every[2] + every[3]) / 2)
    assert got["all"]["max_seconds"] == 30.0


def test_tables_at_tags_and_per_table_versions(root):
    count = "SELECT count(*) AS n FROM project_3"
    assert rows(root, count) == [{"n": 5}]
    assert rows(root, count, ref="run-000001") == [{"n": 4}]
    assert rows(root, count, ref=1) == [{"n": 4}]
    # Only the tables a query names are opened: project 4 has no run-000002 and is not in the query.
    assert rows(root, count, ref="run-000002") == [{"n": 5}]
    both = "SELECT (SELECT count(*) FROM project_3) AS a, (SELECT count(*) FROM project_4) AS b"
    assert rows(root, both, refs={3: "run-000001"}) == [{"a": 4, "b": 1}]
    with pytest.raises(StoreError, match="no version or tag 'run-000002'"):
        rows(root, both, ref="run-000002")


def test_typed_data_fields_and_timestamps_in_utc(root):
    got = rows(root, "SELECT data.text AS text, strftime(updated_at, '%Y-%m-%dT%H:%M:%S.%f%z') AS ts "
                     "FROM project_3 WHERE id = 1")
    assert got == [{"text": "text 1", "ts": "2026-01-02T00:00:00.000001+00"}]


def test_bad_query_names_the_tables(root):
    with pytest.raises(query.QueryError, match="project_3, project_4"):
        query.sql(root, "SELECT * FROM project_9")


def test_result_files(root, tmp_path):
    sql = "SELECT id, data.text AS text FROM project_3 ORDER BY id"
    expected = [{"id": i, "text": f"text {i}"} for i in (1, 2, 3, 4, 5)]
    for suffix in ("csv", "json", "jsonl", "parquet"):
        con, rel = query.run(root, sql)
        path = tmp_path / f"out.{suffix}"
        assert query.write_result(con, rel, path) == 5
        con.close()
        if suffix == "csv":
            got = [{"id": int(r["id"]), "text": r["text"]} for r in csv.DictReader(path.read_text().splitlines())]
        elif suffix == "json":
            got = json.loads(path.read_text())
        elif suffix == "jsonl":
            got = [json.loads(line) for line in path.read_text().splitlines()]
        else:
            got = pq.read_table(path).to_pylist()
        assert got == expected, suffix
    con, rel = query.run(root, sql)
    with pytest.raises(query.QueryError, match=r"\.csv, \.parquet"):
        query.write_result(con, rel, tmp_path / "out.xlsx")
    con.close()


def test_cli_sql(root, tmp_path):
    data_dir = str(root.parent)
    runner = CliRunner()
    out = runner.invoke(main, ["--data-dir", data_dir, "sql", "SELECT count(*) AS n FROM project_3", "--tag", "run-000001"])
    assert out.exit_code == 0, out.output
    assert "│ 4 │" in out.output.replace(" ", "").replace("│4│", "│ 4 │")
    out = runner.invoke(main, ["--data-dir", data_dir, "sql", "--example", "disagreements", "-p", "3",
                               "-o", str(tmp_path / "d.json")])
    assert out.exit_code == 0, out.output
    assert [r["task_id"] for r in json.loads((tmp_path / "d.json").read_text())] == [2]
    out = runner.invoke(main, ["--data-dir", data_dir, "sql", "SELECT count(*) AS n FROM project_3",
                               "--at", "project_3=run-000001", "-o", str(tmp_path / "n.csv")])
    assert out.exit_code == 0 and (tmp_path / "n.csv").read_text().splitlines() == ["n", "4"]
    bad_at = runner.invoke(main, ["--data-dir", data_dir, "sql", "SELECT 1", "--at", "three=run-1"])
    assert bad_at.exit_code == 2 and "TABLE=REF" in bad_at.output
    both = runner.invoke(main, ["--data-dir", data_dir, "sql", "SELECT 1", "--tag", "a", "--version", "2"])
    assert both.exit_code == 2 and "at most one" in both.output
    bad = runner.invoke(main, ["--data-dir", data_dir, "sql", "SELEC 1"])
    assert bad.exit_code == 1 and "syntax error" in bad.output.lower()


def test_python_api(root):
    from ls_space_sync.read import api

    data_dir = root.parent
    assert api.open_dataset(3, tag="run-000001", data_dir=data_dir).count_rows() == 4
    assert api.open_dataset(3, version=2, data_dir=data_dir).count_rows() == 5
    first = api.project_store(3, data_dir=data_dir).versions()[0]["timestamp"]
    assert api.open_dataset(3, as_of=first, data_dir=data_dir).version == 1
    with pytest.raises(ValueError, match="at most one"):
        api.open_dataset(3, tag="run-000001", version=1, data_dir=data_dir)
    assert api.sql("SELECT count(*) AS n FROM project_3", tag="run-000001", data_dir=data_dir).to_pylist() == [{"n": 4}]
    con = api.connect(data_dir=data_dir, at={3: "run-000001"})
    assert con.execute("SELECT count(*) FROM project_3 UNION ALL SELECT count(*) FROM project_4").fetchall() == [(4,), (1,)]
    con.close()
    assert list(api.read_tasks(3, data_dir=data_dir, where="id = 1")) == [TASKS[0]]
    assert api.version_diff(3, "run-000001", data_dir=data_dir).inserted == [5]
    assert [r.status for r in api.compact(data_dir=data_dir, dry_run=True)] == ["dry-run", "dry-run"]
