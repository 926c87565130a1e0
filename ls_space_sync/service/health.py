"""What the daemon remembers of its projects and mirror pairs between runs, and the ``GET /health``
report built from it and the state database (times UTC, ISO 8601)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from ls_space_sync.pull.run import RunResult
from ls_space_sync.push.mirror import MirrorResult, mirror_key
from ls_space_sync.settings import MirrorSettings, Settings
from ls_space_sync.store.state import StateDB, utcnow


@dataclass
class ProjectStatus:
    """What the daemon remembers of a project between runs (in memory; the runs are in SQL)."""

    failures: int = 0  # consecutive failed runs
    last_error: str | None = None
    last_result: RunResult | None = None


@dataclass
class MirrorStatus:
    """What the daemon remembers of a mirror pair between passes (in memory)."""

    failures: int = 0  # consecutive failed passes
    last_error: str | None = None
    last_pass: MirrorResult | None = None  # the last successful pass's result
    last_pass_at: datetime | None = None


class DaemonView(Protocol):
    """What :func:`health_report` reads of the daemon (:class:`ls_space_sync.service.daemon.Daemon`
    has it); a protocol, so this module does not import the daemon that imports it."""

    settings: Settings
    state: StateDB
    scheduler: Any
    started_at: datetime
    projects: Any  # the synced project ids
    status: dict[int, ProjectStatus]
    mirrored: dict[int, list[MirrorSettings]]
    mirror_status: dict[str, MirrorStatus]

    def next_run_time(self, project_id: int) -> datetime | None:
        """When the project's next scheduled run is due (UTC), if any."""

    def cluster_report(self) -> dict[str, Any] | None:
        """The daemons sharing the projects, or ``None`` when this daemon runs alone."""


def health_report(daemon: DaemonView) -> dict[str, Any]:
    """The daemon's state for ``GET /health``.

    Returns:
        ``{"status": "UP", "model_class", "started_at", "webhooks": "on"|"off", "projects": {id:
        {"last_run": {"run_id", "status", "trigger", "started_at", "finished_at", "tag", "version",
        "error", "inserted", "updated", "deleted", "duration_seconds"} | None, "last_success_at",
        "seconds_since_success", "consecutive_failures", "next_run_at", "mirrors": keys of the
        pairs whose pass pulls it}}, "mirrors": {key:
        {"source", "target", "both_ways", "last_pass": {"at", "quiet", "versions", "moved"} | None,
        "consecutive_failures", "last_error", "next_run_at"}}}``. A project a mirror pass pulls
        reports the pass's failures and next run.

        With several daemons (``Daemon.cluster_report``) also ``"cluster": {"daemon_id", "url",
        "lease_seconds", "members": [{"daemon_id", "url", "heartbeat_at", "projects"}], "leases":
        {id: owner}}`` and per project ``"holder"`` (the daemon that schedules it) and ``"lease"``
        (the daemon whose run holds its lease now, or ``None``). ``next_run_at`` is known only on
        the holder.
    """
    cluster = daemon.cluster_report()
    now = utcnow()
    projects = {}
    for pid in list(daemon.projects):
        run = daemon.state.last_run(pid)
        success = daemon.state.cursor(pid).last_success_at
        pairs = [mirror_key(pair) for pair in daemon.mirrored.get(pid, [])]
        failures = max([daemon.mirror_status.get(key, MirrorStatus()).failures for key in pairs],
                       default=daemon.status.get(pid, ProjectStatus()).failures)
        nxt = daemon.next_run_time(pid)
        projects[str(pid)] = {
            "last_run": None if run is None else {
                "run_id": run.run_id, "status": run.status, "trigger": run.trigger,
                "started_at": run.started_at.isoformat(),
                "finished_at": run.finished_at.isoformat() if run.finished_at else None,
                "tag": run.tag, "version": run.version, "error": run.error,
                "inserted": run.inserted, "updated": run.updated, "deleted": run.deleted,
                "duration_seconds": run.duration_seconds,
            },
            "last_success_at": success.isoformat() if success else None,
            "seconds_since_success": round((now - success).total_seconds(), 3) if success else None,
            "consecutive_failures": failures,
            "next_run_at": nxt.isoformat() if nxt else None,
            "mirrors": pairs,
        }
        if cluster is not None:
            holder = next((m["daemon_id"] for m in cluster["members"] if pid in m["projects"]), None)
            projects[str(pid)].update(holder=holder, lease=cluster["leases"].get(str(pid)))
    mirrors = {}
    for pair in daemon.settings.mirrors:
        key = mirror_key(pair)
        status = daemon.mirror_status.get(key, MirrorStatus())
        job = daemon.scheduler.get_job(f"mirror-{key}")
        last = status.last_pass
        mirrors[key] = {
            "source": pair.source, "target": last.target if last else pair.target, "both_ways": pair.both_ways,
            "last_pass": None if last is None else {
                "at": status.last_pass_at.isoformat() if status.last_pass_at else None, "quiet": last.quiet,
                "versions": last.versions, "moved": last.moved},
            "consecutive_failures": status.failures, "last_error": status.last_error,
            "next_run_at": job.next_run_time.isoformat() if job and job.next_run_time else None,
        }
    report = {
        "status": "UP",
        "model_class": "ls-space-sync",
        "started_at": daemon.started_at.isoformat(),
        "webhooks": "on" if daemon.settings.server.webhook_secret is not None else "off",
        "projects": projects,
        "mirrors": mirrors,
    }
    if cluster is not None:
        report["cluster"] = cluster
    return report
