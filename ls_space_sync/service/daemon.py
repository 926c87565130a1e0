"""The daemon: APScheduler around ``Syncer.run_once``, plus the HTTP endpoints of ``server.py``.

``ls-space-sync run`` calls :func:`serve`. Jobs, one set per project:

- ``sync-<id>``: the poll. An interval (``schedules[id].interval_seconds``, else
  ``sync.interval_seconds``) or a crontab (``schedules[id].cron``, UTC), with ``jitter_seconds``
  of random delay so many projects do not hit the server together. An interval project also
  syncs once at start. At most one instance at a time; missed runs are coalesced into one.
- ``webhook-<id>``: a one-off run ``server.debounce_seconds`` after a webhook event. While one
  is pending, further events of the project change nothing, so a burst gives one or two runs.
  One that finds the project locked by this daemon's own running job of it (the poll) runs as
  soon as that job ends; locked by another process or daemon, it tries again
  ``LOCKED_RETRY_SECONDS`` later.
- ``compact-<id>``: ``maintenance.compact_project`` every ``compaction.interval_seconds`` (only
  when set).
- ``discover``: with ``projects: all``, re-reads the project list on the poll interval.

And one set per mirror pair (``mirrors:``; key ``<source>-<target>``, ``<source>-new`` while the
first pass has yet to create the target):

- ``mirror-<key>``: :func:`ls_space_sync.mirror.mirror_once` on the source project's schedule
  (same interval or cron, jitter, backoff, at most one instance, coalesced). The pass pulls the
  source (and, both ways, the target), so those projects get no ``sync-<id>`` job of their own:
  two jobs pulling one project would only meet at its lock. A one-way target is not pulled by the
  pass and keeps its own sync job if it is among ``projects``. Pairs run whether or not their
  projects are listed in ``projects``.
- ``webhook-mirror-<key>``: a webhook event for a project a pass pulls schedules the pass,
  debounced like ``webhook-<id>``, instead of a plain sync.

Every sync goes through :meth:`Daemon.sync_job`: a failure (server down, 5xx, bad token) is
logged and recorded as a failed run by ``run_once``, and the project's next poll is pushed back
(``interval * 2**(failures-1)``, at most ``scheduler.max_backoff_seconds``, never earlier than
its schedule). A run refused because another sync of the project holds the lock
(``ProjectLocked``) is not a failure. Nothing a project does stops the daemon or the others.
:meth:`Daemon.mirror_job` does the same for a mirror pass (a lock held by a pull of either project
or a push to the target skips the pass; a failed pass backs off the pair's job).

**Several daemons** (``cluster.enabled: auto`` with a PostgreSQL state and the ``memory`` job store;
see docs/deploy.md): each daemon keeps a row in the ``daemons`` table, renewed every third of
``cluster.lease_seconds`` by a heartbeat thread, and schedules only the projects (and mirror
pairs, by their source) that rendezvous hashing over the live members gives it
(:func:`ls_space_sync.store.leases.owner_of`). When the member list changes (a daemon starts,
stops or misses its heartbeats for a lease period) every daemon reschedules: the new owner of a
project polls it at once. Two daemons never write a project together: every run holds the
project's lease (:func:`ls_space_sync.store.leases.writer_lock`), whoever scheduled it. A webhook
that reaches a daemon that does not own the project is forwarded to the owner
(``service/http.py``).

Jobs reach the daemon through module-level functions (``ls_space_sync.daemon:_sync``), so that
a persistent job store (``scheduler.job_store: sql`` or ``redis://...``) can pickle them (a mirror
job names its pair by source and target and finds it in the settings); hence
one started daemon per process. ``server.serve`` runs it together with the HTTP endpoints.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import ConflictingIdError, JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from ls_space_sync.labelstudio.client import LabelStudioError
from ls_space_sync.logs import register_secret
from ls_space_sync.pull.run import RunResult, Syncer
from ls_space_sync.push.engine import PushError
from ls_space_sync.push.mirror import MirrorResult, mirror_key, mirror_once, mirror_target, summary_lines
from ls_space_sync.service.health import MirrorStatus, ProjectStatus, health_report
from ls_space_sync.service.jobs import first_run_time, make_job_store, project_trigger
from ls_space_sync.service.metrics import Metrics
from ls_space_sync.settings import ConfigError, MirrorSettings, Settings
from ls_space_sync.store.dataset import ProjectLocked, StoreError
from ls_space_sync.store.leases import Member, Membership, daemon_id, held_leases, owner_of, state_is_shared
from ls_space_sync.store.state import FAILED, utcnow

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


def _mirror(source: int, target: int | None, trigger: str = "schedule") -> None:
    """Job entry point for a pass of the mirror pair ``source`` -> ``target`` (as configured)."""
    if _active is not None:
        _active.mirror_job(source, target, trigger)


def _compact(project_id: int) -> None:
    """Job entry point for compaction."""
    if _active is not None:
        _active.compact_job(project_id)


def cluster_enabled(settings: Settings) -> bool:
    """Whether this daemon shares the projects with others (``cluster.enabled``; ``auto``: the state
    is PostgreSQL and the job store ``memory``).

    Raises:
        ConfigError: ``cluster.enabled: on`` with a persistent job store, which the daemons would share
            (APScheduler 3 runs a stored job on every scheduler that reads the store).
    """
    mode, memory = settings.cluster.enabled, settings.scheduler.job_store == "memory"
    if mode == "on" and not memory:
        raise ConfigError("cluster.enabled: on needs scheduler.job_store: memory (several daemons cannot share one "
                          "APScheduler job store; the state database keeps who syncs what)")
    return mode == "on" or (mode == "auto" and memory and state_is_shared(settings))


DISCOVER = 0  # the project id :meth:`Daemon.discover` holds its slot under (no project has id 0)


def _discover() -> None:
    """Job entry point for re-reading the project list (``projects: all``)."""
    if _active is not None:
        _active.discover()


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
        self.mirrored: dict[int, list[MirrorSettings]] = {}  # project -> the mirror pairs whose pass pulls it
        self.mirror_status: dict[str, MirrorStatus] = {}
        self._listed: list[int] = []  # the projects to sync as configured or discovered
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._running: dict[str, int] = {}  # job key -> project id, while a run is going
        # project id -> what to schedule once this daemon's running jobs of the project end: a
        # requested run that found the project locked by one of them (see :meth:`_after_running`).
        self._follow_ups: dict[int, Callable[[], Any]] = {}
        self._stopping = False
        # Several daemons (see the module docstring): this daemon's membership, the live members
        # at the last beat, and the URL the others forward webhooks to (set by ``serve``).
        self.clustered = cluster_enabled(settings)
        self.daemon_id = daemon_id()
        self.url: str | None = settings.cluster.advertise_url
        self.membership: Membership | None = None
        self.members: list[Member] = []
        self.owned: set[int] = set()  # the projects this daemon schedules (all of them when alone)
        self._beat_stop = threading.Event()
        self._beat_thread: threading.Thread | None = None
        self.metrics = Metrics(self._last_successes, self._share if self.clustered else None)
        self.metrics.set_webhooks_enabled(settings.server.webhook_secret is not None)
        self._job_store = make_job_store(settings, self.state)
        self.scheduler = BackgroundScheduler(
            jobstores={"default": self._job_store},
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
        if self.clustered:
            self.membership = Membership(self.state, self.url, self.settings.cluster.lease_seconds, self.daemon_id)
            self.members = self.membership.beat()
            self._beat_thread = threading.Thread(target=self._beat_loop, name="cluster-heartbeat", daemon=True)
            self._beat_thread.start()
        self.scheduler.start(paused=True)
        if self.settings.projects == "all":
            self.set_projects([])  # the mirror pairs now; the projects once discovered
            self.scheduler.add_job(_discover, IntervalTrigger(seconds=self.settings.sync.interval_seconds,
                                                               timezone=timezone.utc),
                                   id="discover", name="discover projects", replace_existing=True,
                                   next_run_time=utcnow())
        else:
            self.set_projects(list(self.settings.projects))
        self.scheduler.resume()
        log.info("scheduler started: %d projects, job store %s", len(self.projects), self.settings.scheduler.job_store)
        if self.clustered:
            log.info("daemon %s shares the projects with %d other live daemon(s); it syncs %d of them", self.daemon_id,
                     len(self.members) - 1, len(self.owned))

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
        self._beat_stop.set()
        if self.scheduler.running:
            self.scheduler.pause()
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._running and time.monotonic() < deadline:
                self._idle.wait(min(1.0, max(0.0, deadline - time.monotonic())))
            busy = set(self._running.values())
        still = sorted(busy - {DISCOVER})
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
            if type(self._job_store).__name__ == "RedisJobStore":
                # The scheduler's thread can open a connection after the store's shutdown closed the
                # pool (it was checking due jobs); it has exited now, so this closes what is left.
                self._job_store.shutdown()
        if _active is self:
            _active = None
        if still:
            log.warning("stopping with runs still going after %.1f s (projects %s); the next sync of each "
                        "finishes their bookkeeping", timeout, ", ".join(map(str, still)))
        if self._beat_thread is not None:
            self._beat_thread.join(10)
        if self.membership is not None:
            self.membership.leave()  # the others take this daemon's projects at their next beat
        if busy:  # a run or the project listing still uses the client: leave it open to the exit
            return False
        self.syncer.client.close()
        self.state.dispose()
        return True

    # --- projects and jobs ---------------------------------------------------------------------

    def _mirrored(self) -> dict[int, list[MirrorSettings]]:
        """``{project id: the mirror pairs whose pass pulls it}``: sources, and both-ways targets once known."""
        out: dict[int, list[MirrorSettings]] = {}
        for pair in self.settings.mirrors:
            target = mirror_target(self.syncer, pair) if pair.both_ways else None
            for pid in [pair.source] + ([target] if target is not None else []):
                out.setdefault(pid, []).append(pair)
        return out

    def set_projects(self, project_ids: list[int], reschedule: bool = True) -> None:
        """Schedule these projects and the mirror pairs; unschedule any other job (idempotent).

        A project a mirror pass pulls gets no sync job of its own (see the module docstring).

        Args:
            project_ids: the projects to sync (``projects``, or the list the server gave).
            reschedule: replace existing jobs (at start: the config may have changed). ``False``
                adds only the missing ones, so the others keep their next run time.

        Raises:
            ConfigError: a project's cron expression is invalid.
        """
        listed = sorted(set(project_ids))
        mirrored = self._mirrored()
        synced = [pid for pid in listed if pid not in mirrored]
        everyone = sorted(set(listed) | set(mirrored))
        mine = self.owns
        every, jitter = self.settings.compaction.interval_seconds, self.settings.scheduler.jitter_seconds
        jobs: dict[str, tuple[Callable[..., None], Any, list[Any], str]] = {}
        for pid in synced:
            if mine(pid):
                jobs[f"sync-{pid}"] = (_sync, project_trigger(self.settings, pid), [pid, "schedule"],
                                       f"sync project {pid}")
        for pair in self.settings.mirrors:
            if mine(pair.source):
                jobs[f"mirror-{mirror_key(pair)}"] = (_mirror, project_trigger(self.settings, pair.source),
                                                       [pair.source, pair.target, "schedule"], f"mirror {mirror_key(pair)}")
        for pid in everyone if every else []:
            if mine(pid):
                trigger = IntervalTrigger(seconds=every, timezone=timezone.utc, jitter=jitter or None)
                jobs[f"compact-{pid}"] = (_compact, trigger, [pid], f"compact project {pid}")
        keep = set(jobs) | {"discover"} | {f"webhook-{pid}" for pid in synced} \
            | {f"webhook-mirror-{mirror_key(pair)}" for pair in self.settings.mirrors}
        for job in self.scheduler.get_jobs():  # gone projects, or left in a persistent store by an older config
            if job.id not in keep:
                try:
                    self.scheduler.remove_job(job.id)
                except JobLookupError:
                    pass
        for pid in sorted(set(self.settings.schedules) - set(synced) - {p.source for p in self.settings.mirrors}):
            log.warning("schedules.%s is set but project %s has no sync job of its own (not among the synced "
                        "projects, or a both-ways mirror target, pulled on its source's schedule)", pid, pid)
        for pid in sorted(set(listed) & set(mirrored)):
            log.info("project %s is pulled by its mirror pass (%s); no separate sync job", pid,
                     ", ".join(mirror_key(pair) for pair in mirrored[pid]))
        for job_id, (func, trigger, args, name) in jobs.items():
            if reschedule or self.scheduler.get_job(job_id) is None:
                first = None if job_id.startswith("compact-") else first_run_time(trigger, jitter)
                self.scheduler.add_job(func, trigger, args=args, id=job_id, name=name, replace_existing=True,
                                       **({"next_run_time": first} if first else {}))
        with self._lock:
            for pid in everyone:
                self.status.setdefault(pid, ProjectStatus())
            for pair in self.settings.mirrors:
                self.mirror_status.setdefault(mirror_key(pair), MirrorStatus())
            self.projects, self.mirrored, self._listed = everyone, mirrored, listed
            self.owned = {pid for pid in everyone if mine(pid)}

    # --- several daemons -----------------------------------------------------------------------

    def holder_of(self, project_id: int) -> Member | None:
        """The live daemon that schedules the project (by rendezvous hashing over the members at the
        last beat; a mirrored project goes with its pair's source), or ``None`` when not clustered."""
        if not self.clustered or self.membership is None:  # alone, or not started (tests drive jobs by hand)
            return None
        pairs = self.mirrored.get(project_id)
        key = pairs[0].source if pairs else project_id
        owner = owner_of(key, [m.daemon_id for m in self.members])
        return next((m for m in self.members if m.daemon_id == owner), None)

    def owns(self, project_id: int) -> bool:
        """Whether this daemon schedules the project (always, when it runs alone)."""
        if not self.clustered or self.membership is None:
            return True
        holder = self.holder_of(project_id)
        return holder is not None and holder.daemon_id == self.daemon_id

    def _beat_loop(self) -> None:
        while not self._beat_stop.wait(self.settings.cluster.lease_seconds / 3):
            self.beat()

    def beat(self) -> None:
        """Renew this daemon's membership; when the live members changed, reschedule its share.

        A daemon whose heartbeat is older than ``cluster.lease_seconds`` is no longer a member, so
        its projects get a new owner here within one lease period (plus a third, this beat's period).
        """
        if self.membership is None or self._stopping:
            return
        try:
            members = self.membership.beat()
        except Exception as exc:  # noqa: BLE001 - a state database hiccup: keep the share, try again
            log.warning("cannot renew this daemon's membership (%s: %s); retrying", type(exc).__name__, exc)
            return
        before = [m.daemon_id for m in self.members]
        self.members = members
        if [m.daemon_id for m in members] != before and not self._stopping:
            was = set(self.owned)
            self.set_projects(self._listed, reschedule=False)
            gained, lost = sorted(self.owned - was), sorted(was - self.owned)
            log.info("daemons now %s; this one took %s and gave up %s", ", ".join(m.daemon_id for m in members),
                     ", ".join(map(str, gained)) or "none", ", ".join(map(str, lost)) or "none")

    def _share(self) -> tuple[str, list[int], int]:
        return self.daemon_id, sorted(self.owned), len(self.members)

    def cluster_report(self) -> dict[str, Any] | None:
        """What ``/health`` says of the daemons: ``{"daemon_id", "url", "members": [{"daemon_id",
        "url", "heartbeat_at", "projects": ids it schedules}], "leases": {project id: holder}}``, or
        ``None`` when not clustered."""
        if not self.clustered or self.membership is None:
            return None
        share: dict[str, list[int]] = {m.daemon_id: [] for m in self.members}
        for pid in list(self.projects):
            holder = self.holder_of(pid)
            if holder is not None:
                share[holder.daemon_id].append(pid)
        return {
            "daemon_id": self.daemon_id, "url": self.url, "lease_seconds": self.settings.cluster.lease_seconds,
            "members": [{"daemon_id": m.daemon_id, "url": m.url, "heartbeat_at": m.heartbeat_at.isoformat(),
                         "projects": share[m.daemon_id]} for m in self.members],
            "leases": {str(pid): lease.owner for pid, lease in sorted(held_leases(self.state).items())},
        }

    def discover(self) -> None:
        """Re-read the project list from the server (``projects: all``); keep the old one on failure.

        Tracked like a run, so :meth:`stop` waits for it before closing the HTTP client (a listing
        waiting to retry a 503 when SIGTERM comes must not meet a closed client).
        """
        with self._slot("discover", DISCOVER) as free:
            if not free:
                return
            try:
                ids = self.syncer.project_ids()
            except LabelStudioError as exc:
                log.warning("cannot list the projects (%s); keeping %d known projects", exc, len(self.projects))
                return
            if ids != self._listed:
                log.info("projects: %s", ", ".join(map(str, ids)) or "none")
                self.set_projects(ids, reschedule=False)

    def poll_job_id(self, project_id: int) -> str:
        """The job that pulls the project on its schedule: ``sync-<id>``, or its mirror's ``mirror-<key>``."""
        pairs = self.mirrored.get(project_id)
        return f"mirror-{mirror_key(pairs[0])}" if pairs else f"sync-{project_id}"

    def next_run_time(self, project_id: int) -> datetime | None:
        """When the project's next poll (or mirror pass) is due (UTC), or ``None``."""
        job = self.scheduler.get_job(self.poll_job_id(project_id))
        return job.next_run_time if job else None

    # --- runs ----------------------------------------------------------------------------------

    def request_sync(self, project_id: int, reason: str = "webhook") -> datetime | None:
        """Schedule a sync of the project ``server.debounce_seconds`` from now (debounced).

        For a project a mirror pass pulls, schedule that pass (each pair's, if several) instead.
        While a requested run is pending, further requests change nothing and return its time.

        Returns:
            When the run is due (UTC; the earliest pass), or ``None`` if the project is not synced
            here or the daemon stops.
        """
        if project_id not in self.projects or self._stopping:
            return None
        delay = self.settings.server.debounce_seconds
        pairs = self.mirrored.get(project_id)
        if pairs:
            return min(self._one_off(_mirror, [p.source, p.target, reason], f"webhook-mirror-{mirror_key(p)}",
                                     f"mirror {mirror_key(p)} ({reason})", delay) for p in pairs)
        return self._one_off(_sync, [project_id, reason], f"webhook-{project_id}",
                             f"sync project {project_id} ({reason})", delay)

    def _one_off(self, func: Callable[..., None], args: list[Any], job_id: str, name: str, delay: float) -> datetime:
        """Add a one-off job ``delay`` seconds from now unless one with ``job_id`` is pending; return when it runs."""
        when = utcnow() + timedelta(seconds=delay)
        try:
            self.scheduler.add_job(func, DateTrigger(when, timezone=timezone.utc), args=args, id=job_id, name=name,
                                   misfire_grace_time=None)
        except ConflictingIdError:
            job = self.scheduler.get_job(job_id)
            if job is not None and job.next_run_time is not None:
                return job.next_run_time
        return when  # added, or it just started: the running job reads the change

    @contextmanager
    def _slot(self, key: str, project_id: int) -> Iterator[bool]:
        """Track a running job for :meth:`stop`; yields ``False`` (run nothing) once the daemon stops."""
        with self._lock:
            free = not self._stopping
            if free:
                self._running[key] = project_id
        if not free:
            yield False
            return
        try:
            yield True
        finally:
            with self._idle:
                self._running.pop(key, None)
                self._idle.notify_all()
                follow_up = None
                if project_id not in self._running.values():
                    follow_up = self._follow_ups.pop(project_id, None)
                stopping = self._stopping
            if follow_up is not None and not stopping:
                follow_up()

    def _after_running(self, project_id: int, own_key: str, follow_up: Callable[[], Any]) -> bool:
        """Call ``follow_up`` once the other running jobs of the project in this daemon end.

        Returns ``False`` (nothing registered) if no other job of this daemon runs the project: the
        lock is held elsewhere (another process, another daemon's lease) or was just released, and
        the caller retries on a timer instead. A requested run that meets this daemon's own poll
        thus runs right after it rather than ``LOCKED_RETRY_SECONDS`` later, where, on a busy
        machine, the next poll may hold the lock again.
        """
        with self._lock:
            if not any(pid == project_id and key != own_key for key, pid in self._running.items()):
                return False
            self._follow_ups[project_id] = follow_up
            return True

    def sync_job(self, project_id: int, trigger: str) -> RunResult | None:
        """Run ``run_once`` for a scheduled or requested sync, and never raise.

        Returns:
            The run's result, or ``None`` if it did not run (daemon stopping, project locked) or failed.
        """
        key = f"{trigger}-{project_id}"
        with self._slot(key, project_id) as go:
            return self._sync(project_id, trigger, key) if go else None

    def _sync(self, project_id: int, trigger: str, key: str) -> RunResult | None:
        status = self.status.setdefault(project_id, ProjectStatus())
        if trigger == "schedule" and self.membership is not None and not self.owns(project_id):
            # Queued before the members changed: the project's new holder polls it.
            log.debug("project %s: now held by another daemon; poll skipped", project_id)
            return None
        try:
            result = self.syncer.run_once(project_id, trigger=trigger)
        except ProjectLocked as exc:
            log.info("project %s: %s; skipping this %s run", project_id, exc, trigger, extra={"project": project_id})
            self.metrics.observe_locked(project_id, trigger)
            if trigger != "schedule" or self.membership is not None:
                # The running sync may have started before the change this request is about; with
                # several daemons, a poll refused by the lease of a daemon that just died (or of the
                # project's former holder) tries again soon rather than an interval later. If the
                # lock is this daemon's own running job, the retry runs as soon as that job ends.
                def retry(delay: float) -> datetime:
                    return self._one_off(_sync, [project_id, trigger], f"webhook-{project_id}",
                                         f"sync project {project_id} ({trigger}, retry)", delay)
                if not self._after_running(project_id, key, lambda: retry(0.0)):
                    retry(LOCKED_RETRY_SECONDS)
            return None
        except (LabelStudioError, StoreError, ValueError) as exc:
            self._failed(project_id, trigger, status, str(exc))
            return None
        except Exception as exc:  # noqa: BLE001 - a bug in one run must not stop the daemon
            log.exception("project %s: unexpected error in a %s run", project_id, trigger, extra={"project": project_id})
            self._failed(project_id, trigger, status, f"{type(exc).__name__}: {exc}")
            return None
        self._succeeded(result, trigger)
        log.info("%s", result.summary(), extra={"run_id": result.run_id, "project": project_id})
        return result

    def _succeeded(self, result: RunResult, trigger: str) -> None:
        status = self.status.setdefault(result.project_id, ProjectStatus())
        status.failures, status.last_error, status.last_result = 0, None, result
        self.metrics.observe_run(result, trigger)
        self.metrics.set_failures(result.project_id, 0)

    def _failed(self, project_id: int, trigger: str, status: ProjectStatus, error: str) -> None:
        status.failures += 1
        status.last_error = error
        last = self.state.last_run(project_id)
        seconds = last.duration_seconds if last is not None and last.status == FAILED else None
        self.metrics.observe_failure(project_id, trigger, seconds)
        self.metrics.set_failures(project_id, status.failures)
        delay = self._backoff(f"sync-{project_id}", status.failures)
        log.error("project %s: %s run failed (%d in a row): %s; next try in %.0f s", project_id, trigger,
                  status.failures, error, delay, extra={"project": project_id,
                                                        "run_id": last.run_id if last is not None else None})

    def _backoff(self, job_id: str, failures: int) -> float:
        """Push a poll job's next run to ``interval * 2**(failures-1)`` from now (capped); return the wait."""
        job = self.scheduler.get_job(job_id)
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

    def mirror_job(self, source: int, target: int | None, trigger: str) -> MirrorResult | None:
        """Run one pass of the configured mirror pair ``source`` -> ``target``, and never raise.

        Returns:
            :func:`mirror_once`'s result, or ``None`` if the pass did not run (daemon stopping, pair no
            longer configured, a project locked) or failed.
        """
        pair = next((p for p in self.settings.mirrors if (p.source, p.target) == (source, target)), None)
        if pair is None:  # left in a persistent job store by an older config
            log.warning("no mirror pair %s -> %s is configured any more; pass skipped", source, target)
            return None
        with self._slot(f"mirror-{trigger}-{mirror_key(pair)}", source) as go:
            return self._mirror_pass(pair, trigger) if go else None

    def _mirror_pass(self, pair: MirrorSettings, trigger: str) -> MirrorResult | None:
        key = mirror_key(pair)
        status = self.mirror_status.setdefault(key, MirrorStatus())
        extra = {"project": pair.source}
        error: str | None = None
        try:
            result = mirror_once(self.syncer, pair)
        except ProjectLocked as exc:
            log.info("mirror %s: %s; skipping this %s pass", key, exc, trigger, extra=extra)
            self.metrics.observe_mirror_pass(pair.source, pair.target, trigger, "locked")
            if trigger != "schedule":
                self._one_off(_mirror, [pair.source, pair.target, trigger], f"webhook-mirror-{key}",
                              f"mirror {key} ({trigger}, retry)", LOCKED_RETRY_SECONDS)
            return None
        except (LabelStudioError, StoreError, PushError, ValueError) as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a bug in one pass must not stop the daemon
            log.exception("mirror %s: unexpected error in a %s pass", key, trigger, extra=extra)
            error = f"{type(exc).__name__}: {exc}"
        if error is not None:
            status.failures, status.last_error = status.failures + 1, error
            self.metrics.observe_mirror_pass(pair.source, pair.target, trigger, "failed")
            for pid in self._pulled_by(pair):
                self.metrics.set_failures(pid, status.failures)
            delay = self._backoff(f"mirror-{key}", status.failures)
            log.error("mirror %s: %s pass failed (%d in a row): %s; next try in %.0f s", key, trigger,
                      status.failures, error, delay, extra=extra)
            return None
        for run in result.runs:
            self._succeeded(run, "mirror")
        status.failures, status.last_error, status.last_pass_at = 0, None, utcnow()
        status.last_pass = result
        self.metrics.observe_mirror_pass(pair.source, pair.target, trigger, "quiet" if result.quiet else "changed",
                                         result.pushes)
        if pair.both_ways and result.target is not None and result.target not in self.mirrored:
            self.set_projects(self._listed, reschedule=False)  # the first pass created the target: pull it too
        head, *details = summary_lines(result, pair)
        log.info("%s%s", head, "" if result.quiet else f" ({'; '.join(details)})", extra=extra)
        return result

    def _pulled_by(self, pair: MirrorSettings) -> list[int]:
        return [pid for pid, pairs in self.mirrored.items() if pair in pairs]

    def compact_job(self, project_id: int) -> None:
        """Run ``maintenance.compact_project`` for a project; log failures, never raise."""
        with self._slot(f"compact-{project_id}", project_id) as go:
            if not go:
                return
            try:
                from ls_space_sync.store.compaction import compact_project  # written separately; optional until it lands

                compact_project(self.settings, project_id)
            except ProjectLocked as exc:
                log.info("project %s: compaction skipped: %s", project_id, exc, extra={"project": project_id})
            except Exception as exc:  # noqa: BLE001 - a failed compaction must not stop the daemon
                log.error("project %s: compaction failed: %s: %s", project_id, type(exc).__name__, exc,
                          extra={"project": project_id})

    # --- reading -------------------------------------------------------------------------------

    def _last_successes(self) -> dict[int, datetime | None]:
        return {pid: self.state.cursor(pid).last_success_at for pid in list(self.projects)}

    def health(self) -> dict[str, Any]:
        """The ``GET /health`` report (see :func:`ls_space_sync.health.health_report`)."""
        return health_report(self)
