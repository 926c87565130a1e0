"""No-change poll: ``Syncer.run_once`` on an unchanged, synced project vs a naive full listing.

The anchor is what a sync without a cursor must do on every poll: list every task's id and
``updated_at`` (``GET /api/tasks?fields=task_only&include=id,updated_at``, paged by page number,
raw httpx), at Label Studio's default page size (100) and at 5,000; the faster one is the anchor.
Ours is the median of 5 polls after one untimed warm-up poll, run once the sync's lag has
passed since the last change. Also shown: a forced full-scan
poll (what every ``sync.full_scan_every``-th poll costs) and the amortized poll.
Target: the no-change poll at least 30x faster than the naive listing.
"""

from __future__ import annotations

from common import (
    BenchEnv, Row, ensure_synced, log, main_for, median, page_through, profiled, timer, wait_past_lag,
)

POLLS = 5
NAIVE_PAGE_SIZES = (100, 5000)


def run(env: BenchEnv) -> list[Row]:
    """Measure the no-change poll and its anchors; write a profile of one poll to ``env.out``."""
    pid = env.project_id
    syncer = ensure_synced(env)
    try:
        # Warm-up after the lag: this run's cursor passes every task changed before it (a project
        # imported seconds ago would otherwise be re-read by every poll), and caches are warm.
        wait_past_lag(syncer.settings)
        syncer.run_once(pid)
        polls = []
        for _ in range(POLLS):
            before = syncer.client.requests
            with timer() as t:
                result = syncer.run_once(pid)
            polls.append({"seconds": t["s"], "requests": syncer.client.requests - before, "status": result.status,
                          "full_scan": result.full_scan})
        log(f"no-change polls: {[round(p['seconds'], 3) for p in polls]} s, "
            f"{[p['requests'] for p in polls]} requests, {[p['status'] for p in polls]}")
        typical = [p for p in polls if not p["full_scan"]] or polls
        with profiled(env.out / "profile-poll.txt"):
            syncer.run_once(pid)
        before = syncer.client.requests
        with timer() as t:
            scan = syncer.run_once(pid, full_scan=True)
        full = {"seconds": t["s"], "requests": syncer.client.requests - before, "status": scan.status}
        log(f"forced full-scan poll: {full['seconds']:.2f} s, {full['requests']} requests ({scan.status})")
        every = syncer.settings.sync.full_scan_every
    finally:
        syncer.close()

    naive = {}
    with env.http() as http:
        for size in NAIVE_PAGE_SIZES:
            with timer() as t:
                tasks, requests = page_through(http, {"project": pid, "fields": "task_only",
                                                      "include": "id,updated_at"}, size)
            naive[size] = {"seconds": t["s"], "requests": requests, "tasks": tasks}
            log(f"naive listing, page_size {size}: {t['s']:.2f} s, {requests} requests, {tasks:,} tasks")
    best = min(naive, key=lambda s: naive[s]["seconds"])
    ours_s = median([p["seconds"] for p in typical])
    ours_req = median([p["requests"] for p in typical])
    amortized = ((every - 1) * ours_s + full["seconds"]) / every if every else ours_s
    raw = {"polls": polls, "full_scan_poll": full, "naive": naive, "full_scan_every": every, "tasks": env.tasks}
    n = f"{env.tasks:,} tasks"
    return [
        Row("poll", f"no-change poll, wall time ({n}; naive at page_size {best})", ours_s,
            naive[best]["seconds"], "s", 30, "higher", raw=raw),
        Row("poll", "no-change poll, requests (naive at LS default page_size 100)", ours_req,
            naive[100]["requests"], "req", None, "higher"),
        Row("poll", f"poll with a full scan every {every} runs, amortized wall time", amortized,
            naive[best]["seconds"], "s", None, "higher"),
        Row("poll", "forced full-scan poll (stamps of every task), wall time", full["seconds"],
            naive[best]["seconds"], "s", None, "higher"),
    ]


if __name__ == "__main__":
    main_for("poll", run)
