"""Store: commit time over many runs, disk use with every version tagged, and after compaction.

No server: a dataset of N server-shaped tasks (the bench workload, as ``fields=all`` returns it)
gets R synthetic runs (default 1,000), each a small change set committed the way a sync run does
it (``ProjectStore.commit`` of ``records.tasks_to_table`` rows with the run's properties, then a
``run-NNNNNN`` tag): 20 updated tasks, 5 new ones, 2 hard deletes.

* commit time: median of runs 1-10 vs median of the last 10 (target <= 1.5x);
* disk with every version tagged vs the final table written alone to a fresh dataset (target <= 2.5x);
* after compaction with all tags kept (``maintenance.compact_project``: ``compact_files`` then
  ``cleanup_old_versions``, refusing to drop a tagged file) vs the same anchor; a few tags are
  read back in full and their row counts checked.

Each run first does what a sync run does before its commit: merge the small fragments when there
are more than ``compaction.max_small_fragments`` of them (``maintenance.merge_small_fragments``;
default from the settings, ``--max-small-fragments 0`` turns it off to measure the store alone).
A run's commit time includes its merge, if it had one; merges are also reported on their own.
One extra run is profiled (``profile-store.txt``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
from datetime import datetime, timedelta, timezone
from typing import Any

import lance
import pyarrow as pa

from common import BenchEnv, LABEL_CONFIG, Row, log, main_for, median, profiled, server_shaped_tasks, timer
from ls_space_sync.store import compaction as maintenance
from ls_space_sync.store.compaction import compact_project, disk_usage
from ls_space_sync.model.records import data_keys, schema_for, tasks_to_table
from ls_space_sync.settings import load_settings
from ls_space_sync.store.dataset import ProjectStore

UPDATES, INSERTS, DELETES = 20, 5, 2
PROJECT = 1
# Issue 15: every tag kept, history may cost up to 4x the table (the floor at 25 changed rows in 1,000
# runs on 20,000 tasks is about 2.35x).
DISK_TARGET = 4.0


def disk_breakdown(path: Any) -> dict[str, int]:
    """Bytes under a dataset by top-level folder (``data``, ``_versions``, ``_deletions``, ...)."""
    from pathlib import Path

    out: dict[str, int] = {}
    for p in Path(path).rglob("*"):
        if p.is_file():
            top = p.relative_to(path).parts[0]
            out[top] = out.get(top, 0) + p.stat().st_size
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _reader(table: pa.Table) -> pa.RecordBatchReader:
    return pa.RecordBatchReader.from_batches(table.schema, table.to_batches())


def _props(seq: int, counts: dict[str, int], when: datetime) -> dict[str, str]:
    """The properties a sync run stores with its version (sync.py), label config included."""
    return {"run_id": f"bench-{seq:06d}", "tag": f"run-{seq:06d}", "cursor": when.isoformat(),
            "full_scan": "false", "counts": json.dumps(counts), "label_config": LABEL_CONFIG}


def run(env: BenchEnv) -> list[Row]:
    """Build the dataset, commit R runs, measure disk before and after compaction."""
    n, runs = env.tasks, getattr(env.args, "store_runs", 1000)
    data_dir = env.work / "store-bench"
    shutil.rmtree(data_dir, ignore_errors=True)
    settings = load_settings(config_path=os.devnull, env={}, overrides={"data_dir": str(data_dir)})
    over = getattr(env.args, "max_small_fragments", None)
    over = settings.compaction.max_small_fragments if over is None else (over or None)
    merges: list[float] = []
    target_rows = getattr(env.args, "merge_target_rows", None) or maintenance.RUN_MERGE_TARGET_ROWS
    store = ProjectStore(settings.resolved_store_root, PROJECT)
    schema = schema_for(data_keys(LABEL_CONFIG))
    rng = random.Random(4)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)

    initial = tasks_to_table(server_shaped_tasks(range(1, n + 1), project=PROJECT, when=start), schema, "bench-000000")
    with timer() as t:
        version, _ = store.commit(_reader(initial), [], _props(0, {"inserted": n}, start))
    store.tag("run-000000", version)
    log(f"store: initial version of {n:,} tasks in {t['s']:.1f} s")

    live = list(range(1, n + 1))
    next_id = n + 1
    expected_rows = {"run-000000": n}
    commit_s, tag_s = [], []

    def one_run(seq: int) -> None:
        nonlocal next_id
        when = start + timedelta(minutes=seq)
        updated = rng.sample(live, UPDATES)
        kept = set(updated)
        deleted = [i for i in rng.sample(live, DELETES + UPDATES) if i not in kept][:DELETES]
        inserted = list(range(next_id, next_id + INSERTS))
        next_id += INSERTS
        rows = tasks_to_table(server_shaped_tasks(updated + inserted, project=PROJECT, when=when, seed=seq),
                              schema, f"bench-{seq:06d}")
        counts = {"inserted": INSERTS, "updated": UPDATES, "deleted": DELETES}
        with timer() as tc:
            with timer() as tm:
                merged = maintenance.merge_small_fragments(store, over, target_rows)
            if merged:
                merges.append(tm["s"])
            version, _ = store.commit(_reader(rows), deleted, _props(seq, counts, when))
        with timer() as tt:
            store.tag(f"run-{seq:06d}", version)
        commit_s.append(tc["s"])
        tag_s.append(tt["s"])
        for i in deleted:
            live.remove(i)
        live.extend(inserted)
        expected_rows[f"run-{seq:06d}"] = len(live)

    for seq in range(1, runs + 1):
        one_run(seq)
        if seq % 100 == 0:
            log(f"store: {seq} runs; last commit {commit_s[-1] * 1000:.0f} ms, tag {tag_s[-1] * 1000:.0f} ms, "
                f"{len(store.dataset().get_fragments())} fragments, {len(merges)} merges so far")
    with profiled(env.out / "profile-store.txt"):
        one_run(runs + 1)
    last_tag = f"run-{runs + 1:06d}"

    tagged_bytes, tagged_files = disk_usage(store.uri)
    tagged_parts = disk_breakdown(store.uri)
    table = store.dataset().to_table()
    alone = data_dir / "table-alone.lance"
    lance.write_dataset(table, str(alone))
    table_bytes, _ = disk_usage(alone)
    log(f"store: {runs + 1} tagged versions use {tagged_bytes / 1e6:.1f} MB in {tagged_files} files; "
        f"the table alone {table_bytes / 1e6:.1f} MB; by folder (MB): "
        f"{ {k: round(v / 1e6, 1) for k, v in tagged_parts.items()} }")

    with timer() as tcomp:
        report = compact_project(settings, PROJECT, retention_seconds=0)
    compacted_bytes, compacted_files = disk_usage(store.uri)
    compacted_parts = disk_breakdown(store.uri)
    checked = {}
    for name in ("run-000000", "run-000001", f"run-{runs // 2:06d}", f"run-{runs:06d}", last_tag):
        rows = store.dataset(name).to_table().num_rows
        if rows != expected_rows[name]:
            raise RuntimeError(f"tag {name} reads {rows} rows after compaction, expected {expected_rows[name]}")
        checked[name] = rows
    tags_left = len(store.tags())
    if tags_left != runs + 2:
        raise RuntimeError(f"compaction left {tags_left} tags, expected {runs + 2}")
    log(f"store: compaction in {tcomp['s']:.1f} s -> {compacted_bytes / 1e6:.1f} MB in {compacted_files} files; "
        f"tags read back: {checked}")

    first, last = median(commit_s[:10]), median(commit_s[-10:])
    raw: dict[str, Any] = {
        "tasks": n, "runs": runs, "change_set": {"updated": UPDATES, "inserted": INSERTS, "deleted": DELETES},
        "commit_seconds": commit_s, "tag_seconds": tag_s, "tagged_bytes": tagged_bytes, "tagged_files": tagged_files,
        "tagged_by_folder": tagged_parts, "compacted_by_folder": compacted_parts,
        "table_bytes": table_bytes, "compacted_bytes": compacted_bytes, "compacted_files": compacted_files,
        "compaction": report.as_dict(), "compaction_seconds": tcomp["s"], "tags_checked": checked,
        "max_small_fragments": over, "merge_target_rows": target_rows, "merge_seconds": merges,
    }
    variant = f", merges past {over} fragments under {target_rows:,} rows" if over else ", no merges"
    return [
        Row("store", f"commit time, runs {runs - 9}-{runs} vs runs 1-10 (median, {n:,} tasks{variant})", last * 1000,
            first * 1000, "ms", 1.5, raw=raw),
        Row("store", f"tag time, runs {runs - 9}-{runs} vs runs 1-10 (median)", median(tag_s[-10:]) * 1000,
            median(tag_s[:10]) * 1000, "ms", None),
        Row("store", f"disk, {runs + 1} versions all tagged vs the table alone{variant}", tagged_bytes / 1e6,
            table_bytes / 1e6, "MB", DISK_TARGET),
        Row("store", "disk after compaction, all tags kept, vs the table alone", compacted_bytes / 1e6,
            table_bytes / 1e6, "MB", DISK_TARGET),
        Row("store", f"  mean commit time of all {runs} runs (merges included) vs runs 1-10",
            sum(commit_s) / len(commit_s) * 1000, first * 1000, "ms", None),
    ] + ([Row("store", f"  slowest of the {len(merges)} merges vs a commit of runs 1-10",
              max(merges) * 1000, first * 1000, "ms", None)] if merges else [])


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store-runs", type=int, default=1000, help="synthetic runs to commit (default 1000)")
    parser.add_argument("--max-small-fragments", type=int, default=None,
                        help="merge before a run's commit when more small fragments than this "
                             "(default: the settings' compaction.max_small_fragments; 0: never)")
    parser.add_argument("--merge-target-rows", type=int, default=None,
                        help="rows per merged fragment (default: maintenance.RUN_MERGE_TARGET_ROWS)")


if __name__ == "__main__":
    main_for("store", run, needs_server=False, extra_args=add_store_arguments)
