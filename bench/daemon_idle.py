"""The daemon's idle cost: CPU and memory of ``ls-space-sync run`` with N projects over a few minutes.

Creates N small projects on a Label Studio server (a local one is started unless --url is given),
starts the daemon as a child process, waits until every project has synced once, then samples
the process's CPU time and RSS from /proc every few seconds while it only polls.

    .venv/bin/python bench/daemon_idle.py                      # 10 projects, 180 s, 60 s poll interval
    .venv/bin/python bench/daemon_idle.py --url http://127.0.0.1:8080 --api-key TOKEN --projects 10

Prints one JSON object: cpu_percent (of one core, over the window), cpu_seconds, rss_mb (start,
end, max), runs during the window, and the settings used. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ls_space_sync.quickstart.localserver import LocalLabelStudio, ensure_venv, free_port  # noqa: E402
from ls_space_sync.settings import server_venv_override  # noqa: E402
from ls_space_sync.store.state import StateDB  # noqa: E402

CONFIG = '<View><Text name="text" value="$text"/><Choices name="label" toName="text"><Choice value="a"/></Choices></View>'
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def make_projects(url: str, key: str, n: int, tasks: int) -> list[int]:
    ids = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Token {key}"}, trust_env=False, timeout=60) as c:
        for i in range(n):
            r = c.post("/api/projects/", json={"title": f"idle bench {i}", "label_config": CONFIG})
            r.raise_for_status()
            pid = r.json()["id"]
            c.post(f"/api/projects/{pid}/import", json=[{"text": f"task {j}"} for j in range(tasks)]).raise_for_status()
            ids.append(pid)
    return ids


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="an existing Label Studio (default: start a local one)")
    ap.add_argument("--api-key")
    ap.add_argument("--projects", type=int, default=10)
    ap.add_argument("--tasks", type=int, default=20, help="tasks per project")
    ap.add_argument("--duration", type=float, default=180, help="seconds to measure")
    ap.add_argument("--interval", type=float, default=60, help="poll interval of each project, seconds")
    ap.add_argument("--sample", type=float, default=5, help="seconds between samples")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lsss-idle-"))
    server = None
    if args.url:
        url, key = args.url, args.api_key
    else:
        venv = Path(server_venv_override() or REPO / ".ci-cache" / "label-studio-venv")
        ensure_venv(venv)
        server = LocalLabelStudio(work / "label-studio", venv=venv).start()
        url, key = server.url, server.api_key
    daemon = None
    ok = False
    try:
        projects = make_projects(url, key, args.projects, args.tasks)
        port = free_port()
        cfg = work / "config.yaml"
        cfg.write_text(yaml.safe_dump({
            "label_studio": {"url": url, "api_key": key}, "projects": projects, "data_dir": str(work / "data"),
            "log_format": "json", "sync": {"interval_seconds": args.interval},
            "server": {"port": port, "webhook_secret": "bench-secret-0000"},
        }))
        exe = Path(sys.executable).parent / "ls-space-sync"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "LS_SPACE_SYNC_"))}
        log = open(work / "daemon.log", "wb")  # noqa: SIM115
        daemon = subprocess.Popen([str(exe), "-c", str(cfg), "run"], env=env, stdout=log, stderr=subprocess.STDOUT)
        state = StateDB(f"sqlite:///{work / 'data' / 'state.db'}")
        deadline = time.monotonic() + 300
        while not all(state.last_run(p) and state.last_run(p).finished_at for p in projects):
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the daemon did not sync every project; see {work / 'daemon.log'}")
            time.sleep(1)
        runs_before = len(state.runs(limit=100000))
        t0, c0 = time.monotonic(), cpu_seconds(daemon.pid)
        rss = [rss_mb(daemon.pid)]
        while time.monotonic() - t0 < args.duration:
            time.sleep(args.sample)
            rss.append(rss_mb(daemon.pid))
        wall, cpu = time.monotonic() - t0, cpu_seconds(daemon.pid) - c0
        runs = len(state.runs(limit=100000)) - runs_before
        state.dispose()
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(60)
        print(json.dumps({
            "projects": args.projects, "tasks_per_project": args.tasks, "poll_interval_seconds": args.interval,
            "window_seconds": round(wall, 1), "cpu_seconds": round(cpu, 2), "cpu_percent": round(100 * cpu / wall, 2),
            "rss_mb": {"start": round(rss[0], 1), "end": round(rss[-1], 1), "max": round(max(rss), 1)},
            "runs_in_window": runs, "exit_code_on_sigterm": code,
        }))
        log.close()
        ok = True
        return 0
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
        if server is not None:
            server.stop()
        if ok:
            shutil.rmtree(work, ignore_errors=True)  # kept when something failed, for its daemon.log


if __name__ == "__main__":
    sys.exit(main())
