"""Compaction: every tag keeps its content, fewer fragments, tag pruning by policy, refusals, the lock."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest
from click.testing import CliRunner

from ls_space_sync.store import compaction as maintenance
from ls_space_sync.cli.console import main
from ls_space_sync.store.compaction import compact_project, tags_to_prune
from ls_space_sync.model.records import schema_for, tasks_to_table
from ls_space_sync.settings import load_settings
from ls_space_sync.store.dataset import ProjectLocked, ProjectStore, StoreError, project_lock

SCHEMA = schema_for(["text"])
NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)


def task(task_id, updated="2026-01-01T00:00:00.000001Z"):
    return {"id": task_id, "project": 3, "created_at": "2026-01-01T00:00:00.000001Z", "updated_at": updated,
            "data": {"text": f"text {task_id}"}, "annotations": [], "predictions": []}


@pytest.fixture
def settings(tmp_path):
    return load_settings(env={}, overrides={"data_dir": str(tmp_path / "data")})


@pytest.fixture
def store(settings):
    """Project 3 after 8 runs (run-000001..run-000008), each changing a few tasks; plus a tag release-1."""
    store = ProjectStore(settings.resolved_store_root, 3)
    for run in range(8):
        if run == 0:
            tasks = [task(i) for i in range(200)]
        else:
            tasks = [task(i, f"2026-02-{run:02d}T00:00:00Z") for i in range(run * 5, run * 5 + 5)] + [task(1000 + run)]
        table = tasks_to_table(tasks, SCHEMA, f"r{run}")
        version, _ = store.commit(pa.RecordBatchReader.from_batches(SCHEMA, table.to_batches()),
                                  [150 + run] if run else [], {"run_id": f"r{run}", "label_config": "<View/>"})
        store.tag(f"run-{run + 1:06d}", version)
    store.dataset().tags.create("release-1", 2)
    return store


def snapshot(store):
    return {name: store.dataset(name).to_table().sort_by("id") for name in store.tags()}


def test_tags_to_prune_policy():
    tags = {f"run-{i:06d}": i for i in range(1, 7)} | {"release-1": 1}
    times = {i: NOW - timedelta(days=10 - i) for i in range(1, 7)}  # run-000006 is 4 days old
    assert tags_to_prune(tags, times, keep_count=None, keep_days=None, now=NOW) == []
    assert tags_to_prune(tags, times, keep_count=2, keep_days=None, now=NOW) == [
        "run-000001", "run-000002", "run-000003", "run-000004"]
    assert tags_to_prune(tags, times, keep_count=None, keep_days=5.5, now=NOW) == [
        "run-000001", "run-000002", "run-000003", "run-000004"]
    # Either rule keeps a tag: the newest 1, or younger than 6.5 days (run-000004..6).
    assert tags_to_prune(tags, times, keep_count=1, keep_days=6.5, now=NOW) == ["run-000001", "run-000002",
                                                                               "run-000003"]
    # The newest run tag always stays.
    assert tags_to_prune(tags, times, keep_count=None, keep_days=0.001, now=NOW) == [f"run-{i:06d}" for i in range(1, 6)]


def test_compaction_keeps_every_tag_and_merges_fragments(settings, store):
    before = snapshot(store)
    fragments = len(store.dataset().get_fragments())
    report = compact_project(settings, 3, retention_seconds=0)
    assert report.status == "compacted" and report.tags_pruned == []
    assert report.fragments_before == fragments == 8
    assert report.fragments_after == len(store.dataset().get_fragments()) == 1
    assert report.bytes_before > 0 and report.bytes_after > 0 and report.files_after > 0
    after = snapshot(store)
    assert sorted(after) == sorted(before)
    for name, table in before.items():
        assert after[name].equals(table), name
    assert store.dataset().to_table().sort_by("id").equals(before["run-000008"])
    assert store.label_config() == "<View/>"  # read past the compaction's own versions


def test_large_fragments_are_not_rewritten(settings, monkeypatch):
    monkeypatch.setattr(maintenance, "TARGET_ROWS_PER_FRAGMENT", 100)
    store = ProjectStore(settings.resolved_store_root, 5)
    for run, ids in enumerate([range(200), range(200, 210), range(210, 220), range(220, 230)]):
        table = tasks_to_table([task(i) for i in ids], SCHEMA, f"r{run}")
        version, _ = store.commit(pa.RecordBatchReader.from_batches(SCHEMA, table.to_batches()), [], {"run_id": f"r{run}"})
        store.tag(f"run-{run + 1:06d}", version)
    first_load = store.dataset().get_fragments()[0].metadata.files[0].path  # 200 rows: large, no deletions
    report = compact_project(settings, 5, retention_seconds=0)
    assert (report.fragments_before, report.fragments_after) == (4, 2)
    assert first_load in {f.metadata.files[0].path for f in store.dataset().get_fragments()}
    assert store.count() == 230


def test_pruning_frees_disk_and_keeps_other_tags(settings, store):
    before = snapshot(store)
    report = compact_project(settings, 3, retention_seconds=0, keep_tags_count=2)
    assert report.tags_pruned == [f"run-{i:06d}" for i in range(1, 7)]
    assert sorted(store.tags()) == ["release-1", "run-000007", "run-000008"]
    for name in store.tags():
        assert store.dataset(name).to_table().sort_by("id").equals(before[name]), name
    assert report.versions_removed >= 6
    assert report.files_after < report.files_before
    versions = [v["version"] for v in store.versions()]
    assert 3 not in versions and 2 in versions  # pruned run-000003's version is gone, release-1's stays


def test_dry_run_changes_nothing(settings, store):
    tags, versions = store.tags(), [v["version"] for v in store.versions()]
    report = compact_project(settings, 3, retention_seconds=0, keep_tags_count=3, dry_run=True)
    assert report.status == "dry-run" and len(report.tags_pruned) == 5
    assert store.tags() == tags and [v["version"] for v in store.versions()] == versions
    assert "would prune 5 tags (run-000001..run-000005)" in maintenance.summary(report)


def test_refuses_when_cleanup_would_delete_a_tagged_file(settings, store, monkeypatch):
    store.dataset().tags.delete("run-000004")  # its version becomes removable
    versions = [v["version"] for v in store.versions()]
    real = maintenance._files_of
    monkeypatch.setattr(maintenance, "_files_of", lambda ds: real(ds) | _candidates(store))
    with pytest.raises(StoreError, match="refusing cleanup"):
        compact_project(settings, 3, retention_seconds=0)
    # Refused before cleanup: every version is still there (the compaction's own commit is harmless).
    assert set(versions) <= {v["version"] for v in store.versions()}


def _candidates(store):
    plan = store.dataset().explain_cleanup_old_versions(older_than=timedelta(0), error_if_tagged_old_versions=False,
                                                        include_files=True)
    return {f.path.rsplit("/", 1)[-1] for f in plan.candidate_files}


def test_takes_the_project_lock(settings, store):
    with project_lock(settings.resolved_store_root, 3):
        with pytest.raises(ProjectLocked):
            compact_project(settings, 3)


def test_no_dataset(settings):
    assert compact_project(settings, 99).status == "no dataset"


def test_cli_compact(settings, store):
    runner = CliRunner()
    data_dir = str(settings.data_dir)
    out = runner.invoke(main, ["--data-dir", data_dir, "compact", "--dry-run", "--keep-tags-count", "4"])
    assert out.exit_code == 0, out.output
    assert out.output.startswith("project 3 (dry run): 8 fragments; would prune 4 tags")
    out = runner.invoke(main, ["--data-dir", data_dir, "compact", "-p", "3", "--retention", "0", "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert (report["fragments_before"], report["fragments_after"]) == (8, 1)
    assert sorted(report) >= ["bytes_after", "bytes_before"]
