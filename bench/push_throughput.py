"""Push throughput: a stored version of N tasks pushed into a new project, vs the server's own
bulk import of the same JSON.

Setup (not timed): a project of N bench tasks (image boxes and a text choice; every task has a
prediction, two in three an annotation), pulled once with ``sync.task_fields: all``.

Anchor: the exact task JSON the push sends (data, meta with origin, annotations, predictions),
built beforehand, POSTed raw to ``/api/projects/{id}/import`` of a fresh project in chunks of
``push.chunk_size``: the server's own bulk import, nothing else. It runs before and after ours
(the SQLite database grows as it goes); the anchor is their mean.

Ours: ``push(syncer, source)`` into a new project: read the version from Lance, build the JSON,
import chunk by chunk, write the id map after each chunk. Then a second push with nothing changed
(the incremental path: no request).

    .venv/bin/python bench/push_throughput.py              # 10,000 tasks
    .venv/bin/python bench/push_throughput.py --tasks 2000 --chunk-size 1000

Target: ours <= 1.2x the anchor.
"""

from __future__ import annotations

import argparse

from common import BenchEnv, Row, log, main_for, timer

from ls_space_sync.push.engine import import_payload, push
from ls_space_sync.model.records import row_to_task
from ls_space_sync.pull.run import Syncer

DEFAULT_TASKS = 10_000


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(tasks=DEFAULT_TASKS)
    parser.add_argument("--chunk-size", type=int, default=500, help="tasks per import request (push.chunk_size)")


def anchor_import(env: BenchEnv, payload: list[dict], chunk: int, label_config: str, title: str) -> float:
    """Seconds for the server to bulk-import ``payload`` into a new project, ``chunk`` tasks a request."""
    with env.http(timeout=3600) as http:
        pid = http.post("/api/projects/", json={"title": title, "label_config": label_config}).raise_for_status().json()["id"]
        with timer() as t:
            for start in range(0, len(payload), chunk):
                http.post(f"/api/projects/{pid}/import", params={"return_task_ids": "true"},
                          json=payload[start:start + chunk]).raise_for_status()
        count = http.get(f"/api/projects/{pid}/").raise_for_status().json()["task_number"]
        assert count == len(payload), f"anchor project {pid} has {count} tasks, not {len(payload)}"
    log(f"anchor ({title}): {len(payload):,} tasks in {t['s']:.1f} s")
    return t["s"]


def run(env: BenchEnv) -> list[Row]:
    chunk = env.args.chunk_size
    settings = env.settings(env.work / f"push-{env.project_id}", task_fields="all")
    settings.push.chunk_size = chunk
    with Syncer(settings) as syncer:
        src = env.project_id
        log(f"pulling project {src} (not timed)")
        log("  " + syncer.run_once(src).summary())
        store = syncer.store(src)
        ds = store.dataset()
        config = store.label_config()
        users = syncer.client.user_ids()
        payload = []
        for batch in ds.to_batches():
            for row in batch.to_pylist():
                task = row_to_task(row)
                origin = {"dataset": f"project-{src}", "version": ds.version, "source_project": src,
                          "source_id": task["id"], "source_created_at": task["created_at"]}
                payload.append(import_payload(task, origin, users))
        n = len(payload)

        before = anchor_import(env, payload, chunk, config, "push bench anchor 1")
        with timer() as t:
            result = push(syncer, src, title="push bench ours")
        log(f"ours: {result.summary()}")
        after = anchor_import(env, payload, chunk, config, "push bench anchor 2")
        anchor = (before + after) / 2
        assert result.created == n

        with timer() as again:
            quiet = push(syncer, src, target_project=result.target_project)
        log(f"second push, nothing changed: {quiet.summary()}")

    raw = {"tasks": n, "chunk_size": chunk, "anchor_before_s": before, "anchor_after_s": after, "ours_s": t["s"],
           "ours_requests": result.requests, "second_push_s": again["s"], "second_push_requests": quiet.requests}
    env.info["push_throughput"] = raw
    return [
        Row("push_throughput", f"push {n:,} tasks to a new project", t["s"], anchor, "s", target=1.0,
            note="anchor: raw bulk import of the same JSON, same chunks", raw=raw),
        Row("push_throughput", "tasks per second", n / t["s"], n / anchor, "tasks/s"),
        Row("push_throughput", "second push, nothing changed", again["s"], anchor, "s",
            note=f"{quiet.requests} requests"),
    ]


if __name__ == "__main__":
    main_for("push_throughput", run, extra_args=_arguments)
