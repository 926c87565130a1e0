"""Several daemons and parallel runs (issue 14, item 6): two ratios, each against its anchor in the same run.

1. **A poll cycle over N small projects** (default 100 of 5 tasks, synced once beforehand): one
   ``ls-space-sync run`` vs two sharing the projects (one PostgreSQL state from tests/pg.py, one
   store folder). The cycle starts when every project is asked for a sync at once (a webhook per
   project, sent to the first daemon, which forwards the other's share) and ends when every project
   has a run finished after that moment; the time is read from ``sync_runs`` (first start to last
   finish). Ratio: 1 daemon / 2 daemons (> 1: two daemons poll faster).
2. **First sync of M projects of T tasks** (default 10 of 2,000 bench tasks, ``common.import_tasks``):
   ``Syncer.run_once`` on each in turn (serial) vs one daemon's parallel runs (``MAX_WORKERS``
   threads) into an empty store, timed the same way. Ratio: serial / parallel.

    .venv/bin/python bench/scale_daemons.py                              # 100 projects; 10 x 2,000 tasks
    .venv/bin/python bench/scale_daemons.py --poll-projects 40 --first-tasks 500   # reduced, for a busy machine

Everything runs on this machine: one Label Studio (the shared bottleneck), the daemons, PostgreSQL.
``--tasks`` (of the common options) is not used; the sizes are the options above.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from common import BenchEnv, Row, label_studio, load_project, log, main_for  # type: ignore[import-not-found]

from ls_space_sync.pull.run import Syncer
from ls_space_sync.quickstart.localserver import free_port
from ls_space_sync.service.daemon import MAX_WORKERS
from ls_space_sync.settings import load_settings
from ls_space_sync.store.state import StateDB, utcnow
from tests.pg import PostgresServer

SECRET = "bench-webhook-secret"
SMALL_CONFIG = ('<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
                '<Choice value="a"/><Choice value="b"/></Choices></View>')


def extra_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--poll-projects", type=int, default=100, help="small projects in the poll cycle (100)")
    parser.add_argument("--first-projects", type=int, default=10, help="projects in the first-sync part (10)")
    parser.add_argument("--first-tasks", type=int, default=2000, help="tasks in each of those (2,000)")


def small_projects(env: BenchEnv, n: int) -> list[int]:
    """``n`` projects of 5 text tasks each (reused when a project of that title exists)."""
    ids = []
    with env.http() as http:
        listing = http.get("/api/projects/", params={"page_size": 1000}).raise_for_status().json()
        have = {p["title"]: p["id"] for p in (listing.get("results", listing) if isinstance(listing, dict) else listing)
                if p.get("task_number") == 5}
        for i in range(n):
            title = f"scale poll {i}"
            if title in have:
                ids.append(int(have[title]))
                continue
            pid = http.post("/api/projects/", json={"title": title, "label_config": SMALL_CONFIG}).raise_for_status()
            pid = pid.json()["id"]
            http.post(f"/api/projects/{pid}/import", json=[{"text": f"p{i} t{j}"} for j in range(5)]).raise_for_status()
            ids.append(int(pid))
    return ids


def daemon_config(env: BenchEnv, folder: Path, projects: list[int], state_url: str | None, store: Path,
                  port: int) -> Path:
    assert env.server is not None
    folder.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {
        "label_studio": {"url": env.server.url, "api_key": env.server.api_key, "timeout_seconds": 600},
        "projects": projects, "data_dir": str(folder), "store_root": str(store), "log_format": "json",
        "sync": {"interval_seconds": 86400, "lag_seconds": 0},
        "server": {"port": port, "webhook_secret": SECRET, "debounce_seconds": 0},
        # Runs queued behind MAX_WORKERS longer than the grace are dropped as missed (APScheduler checks
        # at start): ten first syncs of minutes each would lose six of them with the 60 s default.
        "scheduler": {"jitter_seconds": 0, "shutdown_timeout_seconds": 120, "misfire_grace_seconds": 3600},
        "compaction": {"interval_seconds": None}, "cluster": {"lease_seconds": 10},
    }
    if state_url:
        cfg["state_url"] = state_url
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class Daemon:
    """``ls-space-sync -c CONFIG run`` as a child process."""

    def __init__(self, cfg: Path, port: int):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "LS_SPACE_SYNC__"))}
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
        self.out = open(cfg.parent / "daemon.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "ls_space_sync", "-c", str(cfg), "run"], env=env,
                                     cwd=cfg.parent, stdout=self.out, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"

    def health(self) -> dict[str, Any] | None:
        try:
            r = httpx.get(f"{self.url}/health", timeout=10, trust_env=False)
            return r.json() if r.status_code == 200 else None
        except httpx.HTTPError:
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.out.close()


def wait_for(predicate: Any, timeout: float, what: str, step: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise RuntimeError(f"{what}: not within {timeout} s")


def runs_since(url: str, since: datetime) -> list[tuple[int, datetime, datetime | None, str]]:
    """``(project, started_at, finished_at, status)`` of the pull runs started at or after ``since`` (UTC)."""
    state = StateDB(url)
    try:
        return [(r.project_id, r.started_at, r.finished_at, r.status) for r in state.runs(limit=100_000, kind="pull")
                if r.started_at >= since]
    finally:
        state.dispose()


def span(rows: list[tuple[int, Any, Any, str]]) -> float:
    """First start to last finish of the given runs, seconds."""
    starts = [r[1] for r in rows]
    ends = [r[2] for r in rows if r[2] is not None]
    return (max(ends) - min(starts)).total_seconds()


def cycle_done(url: str, since: datetime, projects: list[int]) -> list[Any] | None:
    rows = [r for r in runs_since(url, since) if r[2] is not None and r[3] in ("succeeded", "skipped")]
    return rows if {r[0] for r in rows} >= set(projects) else None


def poll_cycle(env: BenchEnv, projects: list[int], daemons: int, pg: PostgresServer) -> dict[str, Any]:
    """One poll cycle over ``projects`` (synced before) with ``daemons`` daemons; the seconds and runs."""
    url = pg.create_database()
    store = env.work / f"poll-store-{daemons}"
    seed = Syncer(load_settings(config_path=os.devnull, env={}, overrides={
        "label_studio": {"url": env.server.url, "api_key": env.server.api_key},  # type: ignore[union-attr]
        "projects": projects, "state_url": url, "store_root": str(store), "data_dir": str(env.work / "seed"),
        "sync": {"lag_seconds": 0}}))
    with seed:
        for pid in projects:
            seed.run_once(pid)
    spawned = utcnow()
    ports = [free_port() for _ in range(daemons)]
    procs = [Daemon(daemon_config(env, env.work / f"poll-{daemons}-{i}", projects, url, store, port), port)
             for i, port in enumerate(ports)]
    try:
        def settled() -> bool:
            reports = [p.health() for p in procs]
            return all(r is not None and len(r.get("cluster", {}).get("members", [])) == daemons for r in reports)
        wait_for(settled, 120, f"{daemons} daemon(s) up")
        # The start-up polls (an interval project syncs at start) must be over before the cycle.
        wait_for(lambda: cycle_done(url, spawned, projects) and all(r[2] is not None for r in runs_since(url, spawned)),
                 600, "the start-up polls", step=1)
        time.sleep(3)
        since = utcnow()
        with httpx.Client(timeout=30, trust_env=False) as http:
            for pid in projects:
                http.post(f"{procs[0].url}/webhook", json={"action": "TASKS_CREATED", "project": {"id": pid}},
                          headers={"X-LS-Space-Sync-Secret": SECRET}).raise_for_status()
        rows = wait_for(lambda: cycle_done(url, since, projects), 900, "the poll cycle", step=0.5)
        seconds = span(rows)
        log(f"poll cycle over {len(projects)} projects, {daemons} daemon(s): {seconds:.2f} s ({len(rows)} runs)")
        return {"seconds": seconds, "runs": len(rows)}
    finally:
        for p in procs:
            p.stop()


def first_syncs(env: BenchEnv, projects: list[int]) -> tuple[float, float]:
    """Seconds of the first sync of ``projects``: one after the other, and by one daemon's parallel runs."""
    assert env.server is not None
    serial_dir = env.work / "first-serial"
    settings = load_settings(config_path=os.devnull, env={}, overrides={
        "label_studio": {"url": env.server.url, "api_key": env.server.api_key, "timeout_seconds": 600},
        "projects": projects, "data_dir": str(serial_dir), "sync": {"lag_seconds": 0}})
    started = time.perf_counter()
    with Syncer(settings) as syncer:
        for pid in projects:
            log(f"  serial: {syncer.run_once(pid).summary()}")
    serial = time.perf_counter() - started
    folder = env.work / "first-daemon"
    port = free_port()
    cfg = daemon_config(env, folder, projects, None, folder / "datasets", port)
    since = utcnow()
    proc = Daemon(cfg, port)
    try:
        state = f"sqlite:///{folder / 'state.db'}"
        wait_for(lambda: (folder / "state.db").exists() and cycle_done(state, since, projects), 1800,
                 "the daemon's first syncs", step=1)
        parallel = span(runs_since(state, since))
    finally:
        proc.stop()
    log(f"first sync of {len(projects)} projects: serial {serial:.1f} s, daemon ({MAX_WORKERS} workers) {parallel:.1f} s")
    return serial, parallel


def run(env: BenchEnv) -> list[Row]:
    args = env.args
    rows = []
    with label_studio(env):
        polled = small_projects(env, args.poll_projects)
        with PostgresServer() as pg:
            one = poll_cycle(env, polled, 1, pg)
            two = poll_cycle(env, polled, 2, pg)
        rows.append(Row("scale_daemons", f"poll cycle over {len(polled)} projects: 2 daemons vs 1", two["seconds"],
                        one["seconds"], "s", better="higher",
                        note="webhook per project to daemon 1 (forwarded to the holder); sync_runs first start to "
                             "last finish", raw={"one": one, "two": two}))
        first = [load_project(env, args.first_tasks, title=f"scale first {i} ({args.first_tasks} tasks)")
                 for i in range(args.first_projects)]
        serial, parallel = first_syncs(env, first)
        rows.append(Row("scale_daemons", f"first sync of {len(first)} x {args.first_tasks:,} tasks: daemon vs serial",
                        parallel, serial, "s", better="higher",
                        note=f"one daemon, {MAX_WORKERS} parallel runs, vs run_once in turn",
                        raw={"serial": serial, "parallel": parallel}))
    return rows


if __name__ == "__main__":
    main_for("scale_daemons", run, needs_server=False, extra_args=extra_args)
