"""Benchmark: diff time between two tags of a 100,000-task dataset, and disk use around compaction.

No Label Studio needed: builds a synthetic project dataset the way the pull sync writes it
(``records.tasks_to_table`` + ``ProjectStore.commit`` + a ``run-NNNNNN`` tag per run), over
``--runs`` runs: a first load of ``--tasks`` tasks, then each run updates ``--updates`` tasks (an
annotation added or edited), inserts ``--inserts`` and hard-deletes ``--deletes``.

    .venv/bin/python bench/diff_compaction.py [--tasks 100000] [--runs 50] [--dir /tmp/lsss-bench]

Prints the diff times (task ids only, and with annotation details), two example queries' times,
and bytes/files/fragments before and after compaction: keeping every tag, then pruning to the
newest 10 run tags, then 10 runs later as the daemon would run it (keeping the newest 10).
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from ls_space_sync.read import query
from ls_space_sync.read.diff import diff_versions
from ls_space_sync.store.compaction import compact_project, disk_usage
from ls_space_sync.model.records import schema_for, tasks_to_table
from ls_space_sync.settings import load_settings
from ls_space_sync.store.dataset import ProjectStore

SCHEMA = schema_for(["text"])
START = datetime(2026, 1, 1, tzinfo=timezone.utc)
WORDS = "the quick brown fox jumps over a lazy dog while annotators label every sentence twice".split()


def ts(seconds: float) -> str:
    return (START + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def annotation(ann_id: int, user: int, label: str, at: float) -> dict[str, Any]:
    return {"id": ann_id, "completed_by": user, "created_at": ts(at), "updated_at": ts(at), "lead_time": 3.0 + ann_id % 40,
            "was_cancelled": False, "ground_truth": False,
            "result": [{"id": f"r{ann_id}", "from_name": "sentiment", "to_name": "text", "type": "choices",
                        "value": {"choices": [label]}, "origin": "manual"}]}


def make_task(task_id: int, at: float, annotations: list[dict[str, Any]], rng: random.Random) -> dict[str, Any]:
    text = " ".join(rng.choice(WORDS) for _ in range(30))
    return {"id": task_id, "project": 1, "inner_id": task_id, "created_at": ts(task_id / 1000), "updated_at": ts(at),
            "updated_by": 1, "data": {"text": text}, "meta": {}, "is_labeled": bool(annotations), "overlap": 1,
            "total_annotations": len(annotations), "cancelled_annotations": 0, "total_predictions": 0,
            "comment_count": 0, "unresolved_comment_count": 0, "annotations": annotations, "predictions": [],
            "file_upload": None, "drafts": []}


class Project:
    """The synthetic project's current tasks (what the server would hold)."""

    def __init__(self, n: int, seed: int = 1):
        self.rng = random.Random(seed)
        self.tasks: dict[int, dict[str, Any]] = {}
        self.next_task = 1
        self.next_ann = 1
        self.n = n

    def new_task(self, at: float) -> dict[str, Any]:
        anns = [self.new_annotation(self.rng.randint(1, 8), at) for _ in range(self.rng.choice([0, 1, 1, 2]))]
        task = make_task(self.next_task, at, anns, self.rng)
        self.next_task += 1
        self.tasks[task["id"]] = task
        return task

    def new_annotation(self, user: int, at: float) -> dict[str, Any]:
        ann = annotation(self.next_ann, user, self.rng.choice(["pos", "neg"]), at)
        self.next_ann += 1
        return ann

    def first_load(self) -> Iterator[pa.RecordBatch]:
        for start in range(0, self.n, 10_000):
            batch = [self.new_task(0) for _ in range(min(10_000, self.n - start))]
            yield from tasks_to_table(batch, SCHEMA, "run-1").to_batches()

    def change(self, run: int, updates: int, inserts: int, deletes: int) -> tuple[pa.Table, list[int]]:
        at = run * 3600.0
        changed = []
        for task_id in self.rng.sample(sorted(self.tasks), updates):
            task = self.tasks[task_id]
            if task["annotations"] and self.rng.random() < 0.5:  # edit an annotation
                ann = task["annotations"][0]
                ann["updated_at"] = ts(at)
                ann["result"][0]["value"]["choices"] = [self.rng.choice(["pos", "neg"])]
            else:  # add one
                task["annotations"].append(self.new_annotation(self.rng.randint(1, 8), at))
            task["updated_at"] = ts(at)
            task["total_annotations"] = len(task["annotations"])
            task["is_labeled"] = True
            changed.append(task)
        changed += [self.new_task(at) for _ in range(inserts)]
        gone = self.rng.sample(sorted(t for t in self.tasks if t not in {c["id"] for c in changed}), deletes)
        for task_id in gone:
            del self.tasks[task_id]
        return tasks_to_table(changed, SCHEMA, f"run-{run}"), gone


def timed(fn: Any, *args: Any, repeat: int = 3, **kwargs: Any) -> tuple[float, Any]:
    """Best wall time of ``repeat`` calls, in seconds, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        out = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - started)
    return best, out


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--updates", type=int, default=300, help="tasks updated per run")
    parser.add_argument("--inserts", type=int, default=50, help="tasks inserted per run")
    parser.add_argument("--deletes", type=int, default=10, help="tasks deleted per run")
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary one, removed at the end)")
    args = parser.parse_args()

    work = args.dir or Path(tempfile.mkdtemp(prefix="lsss-bench-"))
    shutil.rmtree(work / "data", ignore_errors=True)
    settings = load_settings(env={}, overrides={"data_dir": str(work / "data")})
    store = ProjectStore(settings.resolved_store_root, 1)
    project = Project(args.tasks)

    started = time.perf_counter()
    version, _ = store.commit(pa.RecordBatchReader.from_batches(SCHEMA, project.first_load()), [], {"run_id": "run-1"})
    store.tag("run-000001", version)
    load_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for run in range(2, args.runs + 1):
        table, gone = project.change(run, args.updates, args.inserts, args.deletes)
        version, _ = store.commit(pa.RecordBatchReader.from_batches(SCHEMA, table.to_batches()), gone,
                                  {"run_id": f"run-{run}"})
        store.tag(f"run-{run:06d}", version)
    runs_seconds = time.perf_counter() - started
    rows = store.count()
    print(f"dataset: {rows} tasks, {args.runs} tagged versions; first load {load_seconds:.1f} s, "
          f"{args.runs - 1} runs {runs_seconds:.1f} s (+{args.inserts} ~{args.updates} -{args.deletes} each)")

    last, mid = f"run-{args.runs:06d}", f"run-{max(1, args.runs - 1):06d}"
    first = "run-000001"
    for old, new in ((mid, last), (first, last)):
        ids_s, d = timed(diff_versions, store, old, new, details=False)
        full_s, d = timed(diff_versions, store, old, new)
        changes = sum(len(u.annotations.added) + len(u.annotations.changed) for u in d.updated)
        print(f"diff {old} -> {new}: +{len(d.inserted)} ~{len(d.updated)} -{len(d.deleted)} tasks; "
              f"task ids {ids_s:.2f} s, with annotation details ({changes} annotation changes) {full_s:.2f} s")

    root = settings.resolved_store_root
    for name in ("annotations-per-annotator", "label-distribution"):
        secs, _ = timed(query.sql, root, query.example(name, 1))
        print(f"sql --example {name}: {secs:.2f} s")
    secs, _ = timed(query.sql, root, "SELECT count(*) FROM project_1")
    print(f"sql SELECT count(*): {secs:.3f} s")

    fragments = len(store.dataset().get_fragments())
    before, files = disk_usage(store.uri)
    print(f"before compaction: {mb(before)}, {files} files, {fragments} fragments in the latest version")
    for label, options in (("keeping all tags", {}), ("keeping the newest 10 run tags", {"keep_tags_count": 10})):
        report = compact_project(settings, 1, retention_seconds=0, **options)
        print(f"compaction {label}: {mb(report.bytes_before)} ({report.files_before} files) -> "
              f"{mb(report.bytes_after)} ({report.files_after} files); fragments "
              f"{report.fragments_before} -> {report.fragments_after}; {len(report.tags_pruned)} tags pruned, "
              f"{report.versions_removed} versions removed, {report.seconds:.1f} s")
    secs, _ = timed(diff_versions, store, f"run-{args.runs - 1:06d}", last)
    print(f"diff {mid} -> {last} after compaction: {secs:.2f} s")

    # Steady state, as the daemon runs it: 10 more runs, then compaction keeping the newest 10 run
    # tags, which are now all younger than the last compaction, so the files only older tags read go.
    for run in range(args.runs + 1, args.runs + 11):
        table, gone = project.change(run, args.updates, args.inserts, args.deletes)
        version, _ = store.commit(pa.RecordBatchReader.from_batches(SCHEMA, table.to_batches()), gone,
                                  {"run_id": f"run-{run}"})
        store.tag(f"run-{run:06d}", version)
    report = compact_project(settings, 1, retention_seconds=0, keep_tags_count=10)
    print(f"10 runs later, compaction keeping the newest 10 run tags: {mb(report.bytes_before)} "
          f"({report.files_before} files) -> {mb(report.bytes_after)} ({report.files_after} files); "
          f"fragments {report.fragments_before} -> {report.fragments_after}; "
          f"{len(report.tags_pruned)} tags pruned, {report.versions_removed} versions removed")
    if args.dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
