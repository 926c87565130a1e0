"""The daemon: APScheduler around ``Syncer.run_once``, plus the HTTP endpoints of ``server.py``.

``ls-space-sync run`` calls :func:`serve`. Jobs, one set per project:

- ``sync-<id>``: the poll. An interval (``schedules[id].interval_seconds``, else
  ``sync.interval_seconds``) or a crontab (``schedules[id].cron``, UTC), with ``jitter_seconds``
  of random delay so many projects do not hit the server together. An interval project also
  syncs once at start. At most one instance at a time; missed runs are coalesced into one.
- ``webhook-<id>``: a one-off run ``server.debounce_seconds`` after a webhook event. While one
  is pending, further events of the project change nothing, so a burst gives one or two runs.
- ``compact-<id>``: ``maintenance.compact_project`` every ``compaction.interval_seconds`` (only
  when set).
- ``discover``: with ``projects: all``, re-reads the project list on the poll interval.

Every sync goes through :meth:`Daemon.sync_job`: a failure (server down, 5xx, bad token) is
logged and recorded as a failed run by ``run_once``, and the project's next poll is pushed back
(``interval * 2**(failures-1)``, at most ``scheduler.max_backoff_seconds``, never earlier than
its schedule). A run refused because another sync of the project holds the lock
(``ProjectLocked``) is not a failure. Nothing a project does stops the daemon or the others.

Jobs reach the daemon through module-level functions (``ls_space_sync.daemon:_sync``), so that
a persistent job store (``scheduler.job_store: sql`` or ``redis://...``) can pickle them; hence
one started daemon per process. ``server.serve`` runs it together with the HTTP endpoints.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlparse

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import ConflictingIdError, JobLookupError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from .labelstudio import LabelStudioError
from .logs import register_secret
from .metrics import Metrics
from .settings import ConfigError, Settings
from .state import FAILED, StateDB, utcnow
from .store import ProjectLocked, StoreError
from .sync import RunResult, Syncer

log = logging.getLogger(__name__)

# Runs in parallel across projects; each run mostly waits on Label Studio.
MAX_WORKERS = 4
# How long a webhook run refused by the project lock waits before it tries again.
LOCKED_RETRY_SECONDS = 5.0

_active: Daemon | None = None


def _sync(project_id: int, trigger: str = "schedule") -> None:
    """Job entry point (a textual reference, so persistent job stores can pickle it)."""
    if _active is not None:
        _active.sync_job(project_id, trigger)


def _compact(project_id: int) -> None:
    """Job entry point for compaction."""
    if _active is not None:
        _active.compact_job(project_id)


def _discover() -> None:
    """Job entry point for re-reading the project list (``projects: all``)."""
    if _active is not None:
        _active.discover()


@dataclass
class ProjectStatus:
    """What the daemon remembers of a project between runs (in memory; the runs are in SQL)."""

    failures: int = 0  # consecutive failed runs
    last_error: str | None = None
    last_result: RunResult | None = None


def make_job_store(settings: Settings, state: StateDB) -> Any:
    """The APScheduler job store named by ``scheduler.job_store``.

    ``memory`` (default), ``sql`` (table ``apscheduler_jobs`` in the state database) or a
    ``redis://[:password@]host[:port][/db]`` URL (needs the ``redis`` package).

    Raises:
        ConfigError: an unknown value, or Redis without the ``redis`` package.
    """
    kind = settings.scheduler.job_store
    if kind == "memory":
        return MemoryJobStore()
    if kind == "sql":
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

        return SQLAlchemyJobStore(engine=state.engine)
    if kind.startswith(("redis://", "rediss://")):
        try:
            from apscheduler.jobstores.redis import RedisJobStore
        except ImportError:
            raise ConfigError("scheduler.job_store is a redis:// URL but the redis package is not installed; "
                              "pip install redis, or use job_store: memory or sql") from None
        url = urlparse(kind)
        register_secret(url.password)
        db = int(url.path.strip("/") or 0)
        return RedisJobStore(db=db, host=url.hostname or "localhost", port=url.port or 6379,
                             password=url.password, ssl=url.scheme == "rediss")
    raise ConfigError(f"scheduler.job_store must be memory, sql or a redis:// URL, not {kind!r}")


def project_trigger(settings: Settings, project_id: int) -> IntervalTrigger | CronTrigger:
    """The poll trigger of a project: its own schedule, else ``sync.interval_seconds``.

    Raises:
        ConfigError: ``schedules.<id>.cron`` is not a valid 5-field crontab.
    """
    schedule = settings.schedules.get(project_id)
    jitter = settings.scheduler.jitter_seconds or None
    if schedule is not None and schedule.cron:
        try:
            return CronTrigger.from_crontab(schedule.cron, timezone=timezone.utc)
        except ValueError as exc:
            raise ConfigError(f"schedules.{project_id}.cron: {exc}; use 5 fields like '*/15 * * * *' (UTC)") from None
    seconds = (schedule.interval_seconds if schedule and schedule.interval_seconds else None) \
        or settings.sync.interval_seconds
    return IntervalTrigger(seconds=seconds, timezone=timezone.utc, jitter=jitter)


class Daemon:
    """The scheduler and the per-project bookkeeping the HTTP endpoints read.

    Args:
        settings: the loaded settings.
        syncer: the :class:`Syncer` to run (default: built from ``settings``).

    Raises:
        ConfigError: a bad job store or cron expression (at :meth:`start`).
    """

    def __init__(self, settings: Settings, syncer: Syncer | None = None):
        self.settings = settings
        self.syncer = syncer or Syncer(settings)
        self.state = self.syncer.state
        self.started_at = utcnow()
        self.projects: list[int] = []
        self.status: dict[int, ProjectStatus] = {}
        self.metrics = Metrics(self._last_successes)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._running: dict[str, int] = {}  # job key -> project id, while a run is going
        self._stopping = False
        self.scheduler = BackgroundScheduler(
            jobstores={"default": make_job_store(settings, self.state)},
            executors={"default": ThreadPoolExecutor(MAX_WORKERS)},
            job_defaults={"coalesce": True, "max_instances": 1,
                          "misfire_grace_time": int(settings.scheduler.misfire_grace_seconds)},
            timezone=timezone.utc,
        )
        if settings.server.webhook_secret is not None:
            register_secret(settings.server.webhook_secret.get_secret_value())

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Add the jobs and start the scheduler (in its own thread); returns at once."""
        global _active
        _active = self
        self.scheduler.start(paused=True)
        if self.settings.projects == "all":
            self.scheduler.add_job(_discover, IntervalTrigger(seconds=self.settings.sync.interval_seconds,
                                                               timezone=timezone.utc),
                                   id="discover", name="discover projects", replace_existing=True,
                                   next_run_time=utcnow())
        else:
            self.set_projects(list(self.settings.projects))
        self.scheduler.resume()
        log.info("scheduler started: %d projects, job store %s", len(self.projects), self.settings.scheduler.job_store)

    def stop(self, timeout: float | None = None) -> bool:
        """Stop taking new runs and wait for the running ones.

        Args:
            timeout: seconds to wait (default ``scheduler.shutdown_timeout_seconds``).

        Returns:
            ``True`` if every run finished in time; ``False`` if some still run (their runs stay
            recorded as running and the next sync of the project finishes their bookkeeping).
        """
        global _active
        timeout = self.settings.scheduler.shutdown_timeout_seconds if timeout is None else timeout
        with self._lock:
            self._stopping = True
        if self.scheduler.running:
            self.scheduler.pause()
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._running and time.monotonic() < deadline:
                self._idle.wait(min(1.0, max(0.0, deadline - time.monotonic())))
            still = sorted(set(self._running.values()))
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if _active is self:
            _active = None
        if still:
            log.warning("stopping with runs still going after %.1f s (projects %s); the next sync of each "
                        "finishes their bookkeeping", timeout, ", ".join(map(str, still)))
            return False
        self.syncer.client.close()
        self.state.dispose()
        return True

    # --- projects and jobs ---------------------------------------------------------------------

    def _job_ids(self, project_id: int) -> list[str]:
        ids = [f"sync-{project_id}"]
        if self.settings.compaction.interval_seconds:
            ids.append(f"compact-{project_id}")
        return ids

    def set_projects(self, project_ids: list[int]) -> None:
        """Schedule these projects and unschedule any other (idempotent).

        Raises:
            ConfigError: a project's cron expression is invalid.
        """
        new = sorted(set(project_ids))
        keep = {"discover"} | {job_id for pid in new for job_id in self._job_ids(pid) + [f"webhook-{pid}"]}
        for job in self.scheduler.get_jobs():  # gone projects, or left in a persistent store by an older config
            if job.id not in keep:
                try:
                    self.scheduler.remove_job(job.id)
                except JobLookupError:
                    pass
        for pid in sorted(set(self.settings.schedules) - set(new)):
            log.warning("schedules.%s is set but project %s is not among the synced projects", pid, pid)
        jitter = self.settings.scheduler.jitter_seconds
        for pid in new:
            trigger = project_trigger(self.settings, pid)
            first = utcnow() + timedelta(seconds=random.uniform(0, jitter)) if isinstance(trigger, IntervalTrigger) \
                else None
            kwargs = {"next_run_time": first} if first is not None else {}
            self.scheduler.add_job(_sync, trigger, args=[pid, "schedule"], id=f"sync-{pid}", name=f"sync project {pid}",
                                   replace_existing=True, **kwargs)
            if self.settings.compaction.interval_seconds:
                self.scheduler.add_job(_compact, IntervalTrigger(seconds=self.settings.compaction.interval_seconds,
                                                                 timezone=timezone.utc, jitter=jitter or None),
                                       args=[pid], id=f"compact-{pid}", name=f"compact project {pid}",
                                       replace_existing=True)
        with self._lock:
            for pid in new:
                self.status.setdefault(pid, ProjectStatus())
            self.projects = new

    def discover(self) -> None:
        """Re-read the project list from the server (``projects: all``); keep the old one on failure."""
        try:
            ids = self.syncer.project_ids()
        except LabelStudioError as exc:
            log.warning("cannot list the projects (%s); keeping %d known projects", exc, len(self.projects))
            return
        if ids != self.projects:
            log.info("projects: %s", ", ".join(map(str, ids)) or "none")
            self.set_projects(ids)

    def next_run_time(self, project_id: int) -> datetime | None:
        """When the project's next poll is due (UTC), or ``None``."""
        job = self.scheduler.get_job(f"sync-{project_id}")
        return job.next_run_time if job else None

    # --- runs ----------------------------------------------------------------------------------

    def request_sync(self, project_id: int, reason: str = "webhook") -> datetime | None:
        """Schedule a sync of the project ``server.debounce_seconds`` from now (debounced).

        While a requested run is pending, further requests change nothing and return its time.

        Returns:
            When the run is due (UTC), or ``None`` if the project is not synced here or the daemon stops.
        """
        if project_id not in self.projects or self._stopping:
            return None
        job_id = f"webhook-{project_id}"
        when = utcnow() + timedelta(seconds=self.settings.server.debounce_seconds)
        try:
            self.scheduler.add_job(_sync, DateTrigger(when, timezone=timezone.utc), args=[project_id, reason],
                                   id=job_id, name=f"sync project {project_id} ({reason})",
                                   misfire_grace_time=None)
        except ConflictingIdError:
            job = self.scheduler.get_job(job_id)
            if job is not None and job.next_run_time is not None:
                return job.next_run_time
            return when  # it just started; the running job reads the change
        return when

    def sync_job(self, project_id: int, trigger: str) -> RunResult | None:
        """Run ``run_once`` for a scheduled or requested sync, and never raise.

        Returns:
            The run's result, or ``None`` if it did not run (daemon stopping, project locked) or failed.
        """
        key = f"{trigger}-{project_id}"
        with self._lock:
            if self._stopping:
                return None
            self._running[key] = project_id
        try:
            return self._sync(project_id, trigger)
        finally:
            with self._idle:
                self._running.pop(key, None)
                self._idle.notify_all()

    def _sync(self, project_id: int, trigger: str) -> RunResult | None:
        status = self.status.setdefault(project_id, ProjectStatus())
        try:
            result = self.syncer.run_once(project_id, trigger=trigger)
        except ProjectLocked as exc:
            log.info("project %s: %s; skipping this %s run", project_id, exc, trigger, extra={"project": project_id})
            self.metrics.observe_locked(project_id, trigger)
            if trigger != "schedule":
                # The running sync may have started before the change this request is about.
                self._retry_later(project_id, trigger, LOCKED_RETRY_SECONDS)
            return None
        except (LabelStudioError, StoreError, ValueError) as exc:
            self._failed(project_id, trigger, status, str(exc))
            return None
        except Exception as exc:  # noqa: BLE001 - a bug in one run must not stop the daemon
            log.exception("project %s: unexpected error in a %s run", project_id, trigger, extra={"project": project_id})
            self._failed(project_id, trigger, status, f"{type(exc).__name__}: {exc}")
            return None
        status.failures, status.last_error, status.last_result = 0, None, result
        self.metrics.observe_run(result, trigger)
        self.metrics.set_failures(project_id, 0)
        log.info("%s", result.summary(), extra={"run_id": result.run_id, "project": project_id})
        return result

    def _failed(self, project_id: int, trigger: str, status: ProjectStatus, error: str) -> None:
        status.failures += 1
        status.last_error = error
        last = self.state.last_run(project_id)
        seconds = last.duration_seconds if last is not None and last.status == FAILED else None
        self.metrics.observe_failure(project_id, trigger, seconds)
        self.metrics.set_failures(project_id, status.failures)
        delay = self._backoff(project_id, status.failures)
        log.error("project %s: %s run failed (%d in a row): %s; next try in %.0f s", project_id, trigger,
                  status.failures, error, delay, extra={"project": project_id,
                                                        "run_id": last.run_id if last is not None else None})

    def _backoff(self, project_id: int, failures: int) -> float:
        """Push the project's next poll to ``interval * 2**(failures-1)`` from now (capped); return the wait."""
        job = self.scheduler.get_job(f"sync-{project_id}")
        if job is None or job.next_run_time is None:
            return 0.0
        now = utcnow()
        natural = max(0.0, (job.next_run_time - now).total_seconds())
        interval = job.trigger.interval.total_seconds() if isinstance(job.trigger, IntervalTrigger) else natural
        delay = min(interval * 2 ** (failures - 1), self.settings.scheduler.max_backoff_seconds)
        if delay <= natural:
            return natural
        try:
            self.scheduler.modify_job(job.id, next_run_time=now + timedelta(seconds=delay))
        except JobLookupError:
            return natural
        return delay

    def _retry_later(self, project_id: int, trigger: str, seconds: float) -> None:
        try:
            self.scheduler.add_job(_sync, DateTrigger(utcnow() + timedelta(seconds=seconds), timezone=timezone.utc),
                                   args=[project_id, trigger], id=f"webhook-{project_id}",
                                   name=f"sync project {project_id} ({trigger}, retry)", misfire_grace_time=None)
        except ConflictingIdError:
            pass  # one is pending already

    def compact_job(self, project_id: int) -> None:
        """Run ``maintenance.compact_project`` for a project; log failures, never raise."""
        with self._lock:
            if self._stopping:
                return
            self._running[f"compact-{project_id}"] = project_id
        try:
            from .maintenance import compact_project  # written separately; optional until it lands

            compact_project(self.settings, project_id)
        except ProjectLocked as exc:
            log.info("project %s: compaction skipped: %s", project_id, exc, extra={"project": project_id})
        except Exception as exc:  # noqa: BLE001 - a failed compaction must not stop the daemon
            log.error("project %s: compaction failed: %s: %s", project_id, type(exc).__name__, exc,
                      extra={"project": project_id})
        finally:
            with self._idle:
                self._running.pop(f"compact-{project_id}", None)
                self._idle.notify_all()

    # --- reading -------------------------------------------------------------------------------

    def _last_successes(self) -> dict[int, datetime | None]:
        return {pid: self.state.cursor(pid).last_success_at for pid in list(self.projects)}

    def health(self) -> dict[str, Any]:
        """Each project's state for ``GET /health``: last run, lag, failures, next poll (times UTC ISO 8601)."""
        now = utcnow()
        projects = {}
        for pid in list(self.projects):
            run = self.state.last_run(pid)
            success = self.state.cursor(pid).last_success_at
            status = self.status.get(pid, ProjectStatus())
            nxt = self.next_run_time(pid)
            projects[str(pid)] = {
                "last_run": None if run is None else {
                    "run_id": run.run_id, "status": run.status, "trigger": run.trigger,
                    "started_at": run.started_at.isoformat(),
                    "finished_at": run.finished_at.isoformat() if run.finished_at else None,
                    "tag": run.tag, "version": run.version, "error": run.error,
                },
                "last_success_at": success.isoformat() if success else None,
                "seconds_since_success": round((now - success).total_seconds(), 3) if success else None,
                "consecutive_failures": status.failures,
                "next_run_at": nxt.isoformat() if nxt else None,
            }
        return {
            "status": "UP",
            "model_class": "ls-space-sync",
            "started_at": self.started_at.isoformat(),
            "webhooks": "on" if self.settings.server.webhook_secret is not None else "off",
            "projects": projects,
        }

