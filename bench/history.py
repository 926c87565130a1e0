"""History (issue 16): ``history --task`` and ``configs`` across 1,000 stored versions, against the 1 s goal.

No server: a dataset of ``--tasks`` server-shaped tasks (default 2,000) gets ``--history-runs``
synthetic runs (default 1,000), committed the way a sync run does it (``merge_small_fragments``
with the settings' default, then ``ProjectStore.commit`` with the run's properties, then a
``run-NNNNNN`` tag): each run updates 20 tasks, inserts 5 and deletes 2 (as ``store.py``), and
also updates task 1, so one task changed in every version. A task keeps its ``created_at``
across updates, as on the server.

Measured, each the median of ``--repeat`` calls (default 5) of ``read.history.task_history``,
in this process, index included (nothing cached between calls):

* a typical task: the tasks of the first version still stored at the end, changed about
  ``runs * 20 / tasks`` times each (10 at the defaults); the median task of ``--sample`` of them;
* the hot task (1), changed in every version: the worst case;
* a task deleted half-way (its delete found by bisection);
* ``configs`` (``read.history.config_history``);
* the whole ``ls-space-sync history -p 1 --task ID`` process (Python start-up and imports included).

The goal is absolute (issue 16: a person waits at most 1 s for a task across 1,000 versions), so
the anchor of each row is the goal itself (target 1x), as in ``startup.py``.

    .venv/bin/python bench/history.py                     # 2,000 tasks, 1,000 versions
    .venv/bin/python bench/history.py --work /tmp/hist    # keep the dataset; the next run reuses it
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from common import REPO_ROOT, BenchEnv, LABEL_CONFIG, Row, log, main_for, median, profiled, server_shaped_tasks, timer
from store import DELETES, INSERTS, UPDATES, _props, _reader
from ls_space_sync.model.records import data_keys, schema_for, tasks_to_table
from ls_space_sync.read.history import config_history, task_history
from ls_space_sync.settings import load_settings
from ls_space_sync.store import compaction
from ls_space_sync.store.dataset import ProjectStore

GOAL_S = 1.0
PROJECT = 1
HOT = 1


def build(store: ProjectStore, n: int, runs: int, over: int | None) -> dict[str, Any]:
    """Commit the initial version and ``runs`` runs; return which tasks were deleted when."""
    schema = schema_for(data_keys(LABEL_CONFIG))
    rng = random.Random(16)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    created = {i: start for i in range(1, n + 1)}

    def rows(ids: list[int], when: datetime, seq: int) -> tuple[Any, str]:
        tasks = server_shaped_tasks(ids, project=PROJECT, when=when, seed=seq)
        for t in tasks:  # an update keeps the task's identity
            t["created_at"] = created[t["id"]].strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        # A run_id as store.state makes them: the run's start time (this clock), the project, a nonce.
        run_id = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}Z-p{PROJECT}-{seq:08x}"
        return _reader(tasks_to_table(tasks, schema, run_id)), run_id

    def props(seq: int, counts: dict[str, int], when: datetime, run_id: str) -> dict[str, str]:
        return {**_props(seq, counts, when), "run_id": run_id}

    reader, run_id = rows(list(range(1, n + 1)), start, 0)
    version, _ = store.commit(reader, [], props(0, {"inserted": n}, start, run_id))
    store.tag("run-000000", version)
    live = list(range(2, n + 1))  # the hot task is never deleted
    next_id = n + 1
    deleted_at: dict[int, int] = {}
    began = time.perf_counter()
    if True:
        for seq in range(1, runs + 1):
            when = start + timedelta(minutes=seq)
            updated = rng.sample(live, UPDATES)
            deleted = [i for i in rng.sample(live, DELETES + UPDATES) if i not in set(updated)][:DELETES]
            inserted = list(range(next_id, next_id + INSERTS))
            next_id += INSERTS
            for i in inserted:
                created[i] = when
            compaction.merge_small_fragments(store, over)
            counts = {"inserted": INSERTS, "updated": UPDATES + 1, "deleted": DELETES}
            reader, run_id = rows([HOT] + updated + inserted, when, seq)
            version, _ = store.commit(reader, deleted, props(seq, counts, when, run_id))
            store.tag(f"run-{seq:06d}", version)
            for i in deleted:
                live.remove(i)
                deleted_at[i] = seq
            live.extend(inserted)
            if seq % 200 == 0:
                log(f"history: {seq} runs committed ({time.perf_counter() - began:.0f} s)")
    return {"deleted_at": deleted_at, "live": live}


def run(env: BenchEnv) -> list[Row]:
    """Build (or reuse) the dataset, then time the histories."""
    n, runs, repeat = env.tasks, env.args.history_runs, env.args.repeat
    data_dir = env.work / "history-bench"
    settings = load_settings(config_path=os.devnull, env={}, overrides={"data_dir": str(data_dir)})
    store = ProjectStore(settings.resolved_store_root, PROJECT)
    marker = data_dir / f"built-{n}-{runs}"
    if not marker.exists():
        import shutil

        shutil.rmtree(data_dir, ignore_errors=True)
        with timer() as t:
            facts = build(store, n, runs, settings.compaction.max_small_fragments)
        log(f"history: {runs} runs over {n:,} tasks built in {t['s']:.0f} s")
        marker.write_text(json.dumps(facts))
    facts = json.loads(marker.read_text())
    facts["deleted_at"] = {int(k): v for k, v in facts["deleted_at"].items()}
    versions = store.version()
    rng = random.Random(3)
    first = sorted(set(range(2, n + 1)) & set(facts["live"]))
    sample = rng.sample(first, min(env.args.sample, len(first)))
    halfway = sorted(i for i, seq in facts["deleted_at"].items() if i <= n and abs(seq - runs // 2) < runs // 10)[0]

    def timed(task_id: int) -> tuple[float, Any]:
        seconds, result = [], None
        for _ in range(repeat):
            with timer() as t:
                result = task_history(store, task_id)
            seconds.append(t["s"])
        return median(seconds), result

    typical = []
    for task_id in sample:
        s, h = timed(task_id)
        typical.append((s, task_id, len(h.entries), h.steps))
        log(f"history: task {task_id}: {len(h.entries)} entries, {h.steps} steps, {s:.3f} s")
    typical.sort()
    mid = typical[len(typical) // 2]
    hot_s, hot = timed(HOT)
    log(f"history: hot task {HOT}: {len(hot.entries)} entries, {hot.steps} steps, {hot_s:.3f} s")
    gone_s, gone = timed(halfway)
    log(f"history: task {halfway} deleted at run {facts['deleted_at'][halfway]}: {len(gone.entries)} entries, "
        f"{gone_s:.3f} s")
    config_s = []
    for _ in range(repeat):
        with timer() as t:
            changes = config_history(store)
        config_s.append(t["s"])
    import importlib.util

    with profiled(env.out / "profile-history.txt" if importlib.util.find_spec("pyinstrument") else None):
        task_history(store, mid[1])
    cli_s = []
    cmd = [sys.executable, "-m", "ls_space_sync", "--data-dir", str(data_dir), "history", "-p", str(PROJECT),
           "--task", str(mid[1])]
    for _ in range(repeat):
        with timer() as t:
            subprocess.run(cmd, check=True, capture_output=True, cwd=str(env.work),
                           env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        cli_s.append(t["s"])
    raw = {"tasks": n, "runs": runs, "versions": versions, "repeat": repeat, "typical": typical,
           "hot": {"seconds": hot_s, "entries": len(hot.entries), "steps": hot.steps},
           "deleted": {"task": halfway, "seconds": gone_s, "entries": len(gone.entries)},
           "configs_seconds": config_s, "config_changes": len(changes), "cli_seconds": cli_s}
    where = f"{versions:,} versions of {n:,} tasks"
    return [
        Row("history", f"history --task, median of {len(sample)} tasks changed ~{mid[2] - 1} times, {where}",
            mid[0], GOAL_S, "s", 1.0, note=f"task {mid[1]}, {mid[3]} steps", raw=raw),
        Row("history", f"  slowest of those {len(sample)} tasks", typical[-1][0], GOAL_S, "s", None),
        Row("history", f"history --task of a task changed in every version ({len(hot.entries)} entries)",
            hot_s, GOAL_S, "s", 1.0, note="worst case"),
        Row("history", f"history --task of a task deleted half-way ({len(gone.entries)} entries)", gone_s, GOAL_S,
            "s", 1.0),
        Row("history", f"configs, {where}", median(config_s), GOAL_S, "s", 1.0),
        Row("history", "  the whole `ls-space-sync history --task` process (start-up included)", median(cli_s),
            GOAL_S, "s", None),
    ]


def add_history_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(tasks=2_000)
    parser.add_argument("--history-runs", type=int, default=1000, help="synthetic runs to commit (default 1000)")
    parser.add_argument("--repeat", type=int, default=5, help="calls per measurement; the median is reported")
    parser.add_argument("--sample", type=int, default=5, help="typical tasks timed (default 5)")


if __name__ == "__main__":
    main_for("history", run, needs_server=False, extra_args=add_history_arguments)
