"""First sync vs the server's own JSON export, and the sync process's peak memory.

Anchor: ``GET /api/projects/{id}/export?exportType=JSON&download_all_tasks=true`` streamed to a
file (Label Studio's export; note that in 1.23 it lists predictions as bare ids, so it sends less
than the sync reads). Ours: ``Syncer.run_once`` into an empty store, in a child process so that
its peak RSS is its own, not the benchmark's. The child reads its own ``VmHWM`` (``/proc/self/status``):
``ru_maxrss`` from ``wait4`` is not used, because Python (3.10+) starts children with ``vfork`` and
the kernel's ``exec`` records the high-water mark of the memory it replaces, i.e. the parent's, in
the child's ``ru_maxrss`` (it read 689 MB for a child that never passed 190 MB, 2026-12-01, with the
bench holding the 100,000-task load in memory).

Peak RSS is measured at two project sizes, N and N/10 (a second project), plus a child that only
imports the package and builds a ``Syncer`` (the floor). The child resets the kernel's peak
counter after its imports, so the peak *during the sync* is read apart from import-time peaks:
if the sync holds one page in flight, it is the same at N and N/10. Target: first sync <= 1.0x
the export; peak RSS during the sync at N <= 1.25x at N/10; the whole process under 1 GB (issue 15).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import BenchEnv, Row, load_project, log, main_for, profiled, server_profiled, timer

HERE = Path(__file__).resolve()


def export_project(env: BenchEnv, project_id: int) -> dict[str, Any]:
    """Download the project's JSON export (all tasks) to a scratch file; return seconds and bytes."""
    path = env.work / f"export-{project_id}.json"
    with env.http(timeout=3600) as http, timer() as t:
        with http.stream("GET", f"/api/projects/{project_id}/export",
                         params={"exportType": "JSON", "download_all_tasks": "true"}) as resp:
            resp.raise_for_status()
            with open(path, "wb") as f:
                for chunk in resp.iter_bytes(1 << 20):
                    f.write(chunk)
    size = path.stat().st_size
    path.unlink()
    return {"seconds": t["s"], "bytes": size}


def sync_in_child(env: BenchEnv, project_id: int | None, profile: Path | None = None,
                  keep_in: Path | None = None) -> dict[str, Any]:
    """Run a first sync of ``project_id`` in a fresh child process (``None``: only import, the floor).

    The store goes to ``keep_in`` (emptied first, kept after) or to a scratch folder (removed).
    Returns the child's report plus ``peak_rss_mb`` (the larger of its import and sync peaks) and
    ``wall_seconds``.
    """
    data_dir = keep_in or env.work / f"first-sync-{project_id}"
    shutil.rmtree(data_dir, ignore_errors=True)
    report_file = Path(tempfile.mkstemp(prefix="first-sync-", suffix=".json")[1])
    cmd = [sys.executable, str(HERE), "--child", "--data-dir", str(data_dir), "--report", str(report_file)]
    if project_id is not None:
        cmd += ["--project", str(project_id)]
    if profile is not None:
        cmd += ["--profile", str(profile)]
    with timer() as t:
        proc = subprocess.Popen(cmd, env=env.child_env())
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"first-sync child for project {project_id} exited {proc.returncode}")
    report = json.loads(report_file.read_text())
    report_file.unlink()
    if keep_in is None:
        shutil.rmtree(data_dir, ignore_errors=True)
    whole = max(report["import_peak_rss_mb"], report.get("sync_peak_rss_mb", 0.0))
    report.update(peak_rss_mb=whole, ru_maxrss_mb=usage.ru_maxrss / 1024, wall_seconds=t["s"])
    return report


def _status_mb(key: str) -> float:
    """A memory line of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def child(args: argparse.Namespace) -> None:
    """The child: one first sync (or nothing), then write its report as JSON.

    Imports can peak above what the sync later needs, so the peak of the sync itself is read
    apart: after the imports the kernel's peak counter is reset (``5`` to ``/proc/self/clear_refs``)
    and ``VmHWM`` is read when the sync is done.
    """
    from ls_space_sync.settings import load_settings
    from ls_space_sync.pull.run import Syncer

    settings = load_settings(config_path=os.devnull, env=dict(os.environ),
                             overrides={"data_dir": str(args.data_dir)})
    report: dict[str, Any] = {}
    with Syncer(settings) as syncer:
        report["import_peak_rss_mb"] = _status_mb("VmHWM")  # the imports' peak, before the reset
        Path("/proc/self/clear_refs").write_text("5")
        report["rss_before_sync_mb"] = _status_mb("VmRSS")
        if args.project is not None:
            with profiled(args.profile), timer() as t:
                result = syncer.run_once(args.project)
            report.update(seconds=t["s"], requests=result.requests, inserted=result.inserted, status=result.status)
        report["sync_peak_rss_mb"] = _status_mb("VmHWM")
    args.report.write_text(json.dumps(report))


def run(env: BenchEnv) -> list[Row]:
    """Measure export vs first sync at N, peak RSS at N, N/10 and the import-only floor."""
    small_n = max(env.tasks // 10, 100)
    small_pid = load_project(env, small_n)
    floor = sync_in_child(env, None)
    log(f"import-only child: peak RSS {floor['peak_rss_mb']:.0f} MB, {floor['rss_before_sync_mb']:.0f} MB after imports")
    # Profiled apart (not measured): our side with pyinstrument, the server's side with py-spy, and
    # the server's export of the same project, to see where the task API spends what the export does not.
    with server_profiled(env, env.out / "server-profile-first-sync.txt"):
        sync_in_child(env, small_pid, profile=env.out / "profile-first-sync.txt")
    with server_profiled(env, env.out / "server-profile-export.txt"):
        export_project(env, small_pid)
    small = sync_in_child(env, small_pid)
    log(f"first sync of {small_n:,} tasks: {small['seconds']:.1f} s, peak RSS {small['peak_rss_mb']:.0f} MB")
    export = export_project(env, env.project_id)
    log(f"export of {env.tasks:,} tasks: {export['seconds']:.1f} s, {export['bytes'] / 1e6:.1f} MB")
    big = sync_in_child(env, env.project_id, keep_in=env.sync_dir())  # the poll and incremental start from it
    log(f"first sync of {env.tasks:,} tasks: {big['seconds']:.1f} s, {big['requests']} requests, "
        f"peak RSS {big['peak_rss_mb']:.0f} MB (during the sync {big['sync_peak_rss_mb']:.0f} MB, "
        f"before it {big['rss_before_sync_mb']:.0f} MB)")
    if big["inserted"] != env.tasks:
        raise RuntimeError(f"first sync inserted {big['inserted']} tasks, expected {env.tasks}")
    raw = {"export": export, "sync": big, "sync_small": small, "import_floor": floor, "small_tasks": small_n}
    n = f"{env.tasks:,}"
    growth = lambda r: r["sync_peak_rss_mb"] - r["rss_before_sync_mb"]  # noqa: E731
    return [
        Row("first_sync", f"first sync of {n} tasks vs JSON export", big["seconds"], export["seconds"], "s", 1.0,
            raw=raw),
        Row("first_sync", f"peak RSS during the sync, {n} vs {small_n:,} tasks", big["sync_peak_rss_mb"],
            small["sync_peak_rss_mb"], "MB", 1.25),
        # Issue 15's absolute goal: the whole sync process (imports included) under 1 GB at 100,000 tasks.
        Row("first_sync", f"whole process peak (VmHWM) at {n} tasks vs 1 GB", big["peak_rss_mb"], 1024.0, "MB",
            1.0),
        Row("first_sync", f"  growth during the sync (peak - RSS before it), {n} vs {small_n:,} tasks",
            growth(big), growth(small), "MB", None),
        Row("first_sync", f"  whole process peak (VmHWM, imports included), {n} vs {small_n:,} tasks",
            big["peak_rss_mb"], small["peak_rss_mb"], "MB", None),
    ]


if __name__ == "__main__":
    if "--child" in sys.argv:
        parser = argparse.ArgumentParser()
        parser.add_argument("--child", action="store_true")
        parser.add_argument("--data-dir", type=Path, required=True)
        parser.add_argument("--project", type=int)
        parser.add_argument("--profile", type=Path)
        parser.add_argument("--report", type=Path, required=True)
        child(parser.parse_args())
    else:
        main_for("first_sync", run)
