"""When the daemon's jobs run and where they are kept: APScheduler job stores and triggers from
the settings (``scheduler``, ``schedules``, ``sync.interval_seconds``)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlparse

from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from ls_space_sync.logs import register_secret
from ls_space_sync.settings import ConfigError, Settings
from ls_space_sync.store.state import StateDB, utcnow


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


def first_run_time(trigger: IntervalTrigger | CronTrigger, jitter_seconds: float) -> datetime | None:
    """When a new poll job first runs: an interval job at once (plus up to ``jitter_seconds``,
    so projects do not start together); ``None`` for a cron job, which waits for its time."""
    if not isinstance(trigger, IntervalTrigger):
        return None
    return utcnow() + timedelta(seconds=random.uniform(0, jitter_seconds))
