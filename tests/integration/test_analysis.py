"""SQL, diff, exports and compaction on datasets written by a real pull sync of a real Label Studio.

The server's own view is ``GET /api/tasks?project=P&fields=all`` (less the keys the sync does not
store); every number the analysis commands give is compared with what that listing says.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from ls_space_sync import api, query
from ls_space_sync.cli.console import main
from ls_space_sync.store.compaction import compact_project
from ls_space_sync.model.records import table_to_tasks
from ls_space_sync.settings import load_settings
from ls_space_sync.pull.run import Syncer
# The server's view of a project's tasks (GET /api/tasks?fields=all) as the sync stores them: the
# same helper the pull-sync tests use, so both follow the sync's choice of task keys.
from tests.integration.test_pull_sync import server_tasks

pytestmark = pytest.mark.integration

CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text"><Choice value="pos"/><Choice value="neg"/></Choices>
  <Labels name="ner" toName="text"><Label value="PER"/><Label value="ORG"/></Labels>
</View>"""


def choice(value):
    return {"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [value]}}


def person(start=0, end=3):
    return {"from_name": "ner", "to_name": "text", "type": "labels",
            "value": {"start": start, "end": end, "text": "Ada", "labels": ["PER"]}}


@pytest.fixture
def project(label_studio, ls_client, new_project, tmp_path):
    """A project with 12 tasks (agreeing and disagreeing double annotations, spans, lead times,
    predictions), synced once: ``(settings, syncer, project_id, task_ids)``."""
    pid = new_project(CONFIG)
    tasks = []
    for i in range(12):
        anns = []
        if i % 3 != 2:
            anns.append({"result": [choice("pos"), person()], "lead_time": 2.0 + i})
        if i % 3 == 0:  # a second annotation that disagrees on every third task
            anns.append({"result": [choice("neg" if i % 2 else "pos")], "lead_time": 10.0 * (i + 1)})
        tasks.append({"data": {"text": f"Ada {i}"}, "annotations": anns,
                      "predictions": [{"result": [choice("neg")], "score": 0.5, "model_version": "m1"}] if i < 4 else []})
    ids = ls_client.projects.import_tasks(id=pid, request=tasks, return_task_ids=True).task_ids
    settings = load_settings(
        env={"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.api_key},
        overrides={"data_dir": str(tmp_path / "data"), "projects": [pid], "sync": {"full_scan_every": 0}},
    )
    syncer = Syncer(settings)
    assert syncer.run_once(pid).tag == "run-000001"
    yield settings, syncer, pid, ids
    syncer.close()


def live(annotations):
    return [a for a in annotations if not a.get("was_cancelled")]


def test_sql_counts_equal_the_servers(label_studio, project):
    settings, _, pid, _ = project
    server = server_tasks(label_studio, pid)
    table = query.table_name(pid)

    def sql(text):
        return api.sql(text, settings=settings).to_pylist()

    annotations = [a for t in server.values() for a in t["annotations"]]
    assert sql(f"SELECT count(*) AS n FROM {table}") == [{"n": len(server)}]
    assert sql(f"SELECT count(*) AS n FROM {table}, unnest(annotations)") == [{"n": len(annotations)}]
    assert sql(f"SELECT sum(len(predictions)) AS n FROM {table}") == [
        {"n": sum(len(t["predictions"]) for t in server.values())}]
    assert sql(f"SELECT count(*) AS n FROM {table} WHERE is_labeled") == [
        {"n": sum(t["is_labeled"] for t in server.values())}]

    per_annotator = {r["annotator"]: r["annotations"] for r in sql(query.example("annotations-per-annotator", pid))}
    assert per_annotator == dict(Counter(a["completed_by"] for a in annotations))

    labels = Counter()
    for a in live(annotations):
        for region in a["result"]:
            for label in region["value"][region["type"]]:
                labels[(region["from_name"], label)] += 1
    got = {(r["control"], r["label"]): r["regions"] for r in sql(query.example("label-distribution", pid))}
    assert got == dict(labels) and got[("ner", "PER")] == 8

    expected = []
    for task_id, task in sorted(server.items()):
        answers = {tuple(sorted(v for r in a["result"] if r["from_name"] == "sentiment"
                                for v in r["value"]["choices"])) for a in live(task["annotations"])}
        if len(answers) > 1:
            expected.append(task_id)
    got = [r["task_id"] for r in sql(query.example("disagreements", pid)) if r["control"] == "sentiment"]
    assert got == expected and len(expected) == 2  # tasks 3 and 9 (odd multiples of 3)

    lead = [a["lead_time"] for a in live(annotations)]
    overall = [r for r in sql(query.example("lead-time", pid)) if r["annotator"] == "all"][0]
    assert overall["annotations"] == len(lead)
    assert overall["p50_seconds"] == pytest.approx(statistics.median(lead))
    assert overall["p90_seconds"] == pytest.approx(statistics.quantiles(lead, n=10, method="inclusive")[-1])
    assert overall["max_seconds"] == max(lead)


def test_diff_between_tags_equals_the_operations(label_studio, ls_client, project):
    settings, syncer, pid, ids = project
    before = server_tasks(label_studio, pid)
    created = ls_client.annotations.create(id=ids[2], result=[choice("neg")])           # added
    changed = before[ids[1]]["annotations"][0]["id"]
    ls_client.annotations.update(id=changed, result=[choice("neg")])                     # changed
    removed = before[ids[4]]["annotations"][0]["id"]
    ls_client.annotations.delete(id=removed)                                              # removed
    prediction = ls_client.predictions.create(task=ids[5], result=[choice("pos")], score=0.9, model_version="m2")
    ls_client.tasks.delete(id=ids[6])                                                     # task deleted
    new_ids = ls_client.projects.import_tasks(id=pid, request=[{"data": {"text": "new"}}], return_task_ids=True).task_ids
    second = syncer.run_once(pid)
    assert second.tag == "run-000002"

    result = CliRunner().invoke(main, ["--data-dir", str(settings.data_dir), "diff", "-p", str(pid),
                                       "run-000001", "run-000002", "--json"])
    assert result.exit_code == 0, result.output
    diff = json.loads(result.output)
    after = server_tasks(label_studio, pid)
    assert diff["inserted"] == new_ids and diff["deleted"] == [ids[6]]
    updated = {u["id"]: u for u in diff["updated"]}
    assert sorted(updated) == sorted([ids[1], ids[2], ids[4], ids[5]])
    assert [a["id"] for a in updated[ids[2]]["annotations"]["added"]] == [created.id]
    assert updated[ids[1]]["annotations"]["changed"] == [{
        "id": changed, "updated_at": after[ids[1]]["annotations"][0]["updated_at"],
        "before": before[ids[1]]["annotations"][0]["updated_at"]}]
    assert [a["id"] for a in updated[ids[4]]["annotations"]["removed"]] == [removed]
    assert [p["id"] for p in updated[ids[5]]["predictions"]["added"]] == [prediction.id]
    assert all(u["fields"][0] == "updated_at" for u in diff["updated"])
    # The people's report says the same.
    text = CliRunner().invoke(main, ["--data-dir", str(settings.data_dir), "diff", "-p", str(pid), "run-000001"])
    assert "tasks: +1 inserted  ~4 updated  -1 deleted" in text.output


def test_exports_round_trip(label_studio, project, tmp_path):
    settings, _, pid, _ = project
    server = server_tasks(label_studio, pid)

    assert api.export_version(pid, tmp_path / "tasks.jsonl", "jsonl", settings=settings) == len(server)
    exported = [json.loads(line) for line in (tmp_path / "tasks.jsonl").read_text().splitlines()]
    assert {t["id"]: t for t in exported} == server  # the server's task JSON, exactly

    ds = api.open_dataset(pid, tag="run-000001", settings=settings)
    assert api.export_version(pid, tmp_path / "tasks.parquet", settings=settings) == len(server)
    assert pq.read_table(tmp_path / "tasks.parquet").sort_by("id").equals(ds.to_table().sort_by("id"))

    regions = sum(len(a["result"]) for t in server.values() for a in t["annotations"])
    assert api.export_version(pid, tmp_path / "regions.parquet", settings=settings, regions=True) == regions
    spans = pq.read_table(tmp_path / "regions.parquet").to_pylist()
    assert {(r["label"], r["start"], r["end"]) for r in spans if r["type"] == "labels"} == {("PER", 0, 3)}

    hf = api.to_hf_dataset(pid, settings=settings)
    assert hf.num_rows == len(server) and "annotations" in hf.column_names
    hf_regions = api.to_hf_dataset(pid, settings=settings, regions=True, source="predictions")
    assert hf_regions.num_rows == sum(len(t["predictions"]) for t in server.values())

    streamed = {t["id"]: t for t in api.torch_iterable(pid, tag="run-000001", settings=settings)}
    assert streamed == server
    assert {t["id"] for t in api.read_tasks(pid, settings=settings, where="is_labeled")} == {
        i for i, t in server.items() if t["is_labeled"]}


def test_compaction_keeps_every_tag_and_sync_goes_on(label_studio, ls_client, project):
    settings, syncer, pid, ids = project
    for n, task_id in enumerate(ids[:4]):  # four more runs, each with one change
        ls_client.annotations.create(id=task_id, result=[choice("neg")])
        assert syncer.run_once(pid).tag == f"run-{n + 2:06d}"
    store = syncer.store(pid)
    snapshot = {name: store.dataset(name).to_table().sort_by("id") for name in store.tags()}
    assert len(snapshot) == 5

    report = compact_project(settings, pid, retention_seconds=0, keep_tags_count=3)
    assert report.tags_pruned == ["run-000001", "run-000002"]
    assert report.fragments_before == 5 and report.fragments_after == 1
    assert sorted(store.tags()) == ["run-000003", "run-000004", "run-000005"]
    for name in store.tags():
        assert store.dataset(name).to_table().sort_by("id").equals(snapshot[name]), name
    assert report.files_after < report.files_before

    # The sync goes on from the compacted dataset, and the store still equals the server.
    ls_client.annotations.create(id=ids[5], result=[choice("pos")])
    assert syncer.run_once(pid).tag == "run-000006"
    server = server_tasks(label_studio, pid)
    assert {t["id"]: t for t in table_to_tasks(store.dataset().to_table())} == server
    assert store.label_config() == ls_client.projects.get(id=pid).label_config
    assert [u.id for u in api.version_diff(pid, "run-000005", "run-000006", settings=settings).updated] == [ids[5]]
