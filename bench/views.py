"""Views: an incremental refresh after k changed tasks vs a full recompute of the same view.

No server: a source of N server-shaped tasks (the bench workload, ``common.server_shaped_tasks``,
written through ``records.tasks_to_table`` and ``ProjectStore.commit`` as a sync run writes it,
default 100,000) gets each built-in view (``regions``, ``annotations``, ``task_labels``) built
once, then runs that change k tasks (a new annotation on each, as an annotator would add; k = 10
and 1,000), each followed by the view's refresh.

* ours: ``refresh_view`` after a run of k changed tasks (change set from the two versions'
  ``id, run_id``, the k rows read and transformed, one ``merge_insert`` commit, the tag), median
  of 3 runs for k = 10, one for k = 1,000;
* anchor: a full recompute of the same view at the same source version (``refresh_view(...,
  rebuild=True)``: the transform over every task, written as a new view version), median of 2.

Target: k = 10 <= 0.05x of the full recompute (issue 13); k = 1,000 is informational.
Pass the same ``--work DIR`` again to reuse the source built by an earlier run (building 100,000
tasks takes a minute or two).
"""

from __future__ import annotations

import os
import random
import shutil
from datetime import datetime, timezone

import pyarrow as pa
from common import LABEL_CONFIG, BenchEnv, Row, log, main_for, median, server_shaped_tasks, timer

from ls_space_sync.model.records import data_keys, schema_for, tasks_to_table
from ls_space_sync.settings import load_settings
from ls_space_sync.store.dataset import ProjectStore
from ls_space_sync.views import StoreWorkspace, refresh_view

PROJECT = 1
BUILD_CHUNK = 10_000
VIEWS = ["regions", "annotations", "task_labels"]


def build_source(store: ProjectStore, n: int) -> None:
    """Commit N tasks as one first run (skipped when the work folder already holds them)."""
    if store.exists() and store.count() == n:
        log(f"reusing the {n}-task source at {store.uri}")
        return
    shutil.rmtree(store.uri, ignore_errors=True)
    schema = schema_for(data_keys(LABEL_CONFIG))

    def batches():
        for start in range(0, n, BUILD_CHUNK):
            ids = range(start + 1, min(n, start + BUILD_CHUNK) + 1)
            yield from tasks_to_table(server_shaped_tasks(ids, seed=start), schema, "bench-000001").to_batches()
            log(f"  source: {min(n, start + BUILD_CHUNK)}/{n} tasks")

    version, _ = store.commit(pa.RecordBatchReader.from_batches(schema, batches()), [], {"run_id": "bench-000001"})
    store.tag("run-000001", version)


def change_run(store: ProjectStore, k: int, seq: int, rng: random.Random) -> None:
    """One run that adds an annotation to k random tasks (as a sync run commits it, then tags it)."""
    schema = store.schema()
    assert schema is not None
    n = store.count()
    ids = sorted(rng.sample(range(1, n + 1), k))
    rows = store.dataset().to_table(filter=f"id IN ({', '.join(map(str, ids))})")
    from ls_space_sync.model.records import table_to_tasks

    when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    tasks = []
    for t in table_to_tasks(rows):
        ann = {"id": 10_000_000 + seq * 10_000 + len(tasks), "completed_by": 2, "created_at": when,
               "updated_at": when, "lead_time": 3.5, "was_cancelled": False, "ground_truth": False,
               "result": [{"from_name": "sentiment", "to_name": "text", "type": "choices",
                           "value": {"choices": [rng.choice(["Positive", "Negative"])]}}]}
        t["annotations"] = list(t.get("annotations") or []) + [ann]
        t["total_annotations"] = len(t["annotations"])
        t["updated_at"] = when
        tasks.append(t)
    run_id = f"bench-{seq:06d}"
    table = tasks_to_table(tasks, schema, run_id)
    version, _ = store.commit(pa.RecordBatchReader.from_batches(schema, table.to_batches()), [], {"run_id": run_id})
    store.tag(f"run-{seq:06d}", version)


def run(env: BenchEnv) -> list[Row]:
    """Build the source and each view, then time refreshes after k = 10 and 1,000 changes vs rebuilds."""
    data_dir = env.work / "views-bench"
    settings = load_settings(config_path=os.devnull, env={}, overrides={
        "data_dir": str(data_dir), "views": [{"name": v, "project": PROJECT} for v in VIEWS]})
    ws = StoreWorkspace(settings)
    store = ws.store(PROJECT)
    build_source(store, env.tasks)
    rng = random.Random(13)
    seq = max([int(t.split("-")[1]) for t in store.tags()] + [1])
    rows: list[Row] = []
    try:
        for view in settings.views:
            log(f"view {view.name}: first build")
            first = refresh_view(ws, view, rebuild=True)
            assert first.status == "succeeded", first.error
            fulls = []
            for _ in range(2):
                with timer() as t:
                    result = refresh_view(ws, view, rebuild=True)
                assert result.status == "succeeded" and result.full, result.summary()
                fulls.append(t["s"])
            full = median(fulls)
            log(f"  full recompute: {full:.2f} s ({result.inserted} rows)")
            for k, rounds in ((10, 3), (1000, 1)):
                times = []
                for _ in range(rounds):
                    seq += 1
                    change_run(store, k, seq, rng)
                    with timer() as t:
                        result = refresh_view(ws, view)
                    assert result.status == "succeeded" and not result.full and result.tasks == k, result.summary()
                    times.append(t["s"])
                ours = median(times)
                log(f"  k={k}: {ours * 1000:.0f} ms ({', '.join(f'{x * 1000:.0f}' for x in times)})")
                rows.append(Row("views", f"{view.name}: refresh after k={k} changed tasks vs a full recompute "
                                         f"({env.tasks} tasks)", ours * 1000, full * 1000, "ms",
                                0.05 if k == 10 else None,
                                note=f"{result.inserted}+{result.updated} view rows written",
                                raw={"runs_s": times, "full_s": fulls, "view_rows": first.inserted}))
    finally:
        ws.close()
    return rows


if __name__ == "__main__":
    main_for("views", run, needs_server=False)
