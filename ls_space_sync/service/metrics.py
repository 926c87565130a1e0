"""Prometheus metrics of the daemon (``GET /metrics``), in a registry of their own.

| metric | type | labels |
|---|---|---|
| ``ls_space_sync_runs_total`` | counter | project, trigger, status (succeeded, skipped, failed, locked) |
| ``ls_space_sync_rows_total`` | counter | project, change (inserted, updated, deleted) |
| ``ls_space_sync_run_duration_seconds`` | histogram | project |
| ``ls_space_sync_seconds_since_last_success`` | gauge | project (``+Inf`` before the first success) |
| ``ls_space_sync_consecutive_failures`` | gauge | project |
| ``ls_space_sync_webhook_events_total`` | counter | action (Label Studio's action name, or ``other``) |
| ``ls_space_sync_webhook_rejected_total`` | counter | reason (auth, too_large, malformed, unknown_project, disabled) |
| ``ls_space_sync_mirror_passes_total`` | counter | source, target, trigger, outcome (quiet, changed, failed, locked) |
| ``ls_space_sync_mirror_tasks_total`` | counter | source, target (of the push), change (created, updated, deleted) |
| ``ls_space_sync_webhooks_enabled`` | gauge | none; 1 when ``server.webhook_secret`` is set (webhook endpoints on) |
| ``ls_space_sync_project_holder`` | gauge | project, daemon; 1 for each project this daemon schedules (*) |
| ``ls_space_sync_live_daemons`` | gauge | none; the daemons sharing the projects at the last heartbeat (*) |
| ``ls_space_sync_webhooks_forwarded_total`` | counter | outcome (forwarded, failed): webhooks passed to the holder (*) |

(*) only when several daemons share the projects (``cluster``, see ``daemon.py``).

The pulls of a mirror pass count in ``ls_space_sync_runs_total`` with trigger ``mirror``. A mirror
whose target the first pass creates is labelled ``target="new"``.

The time since the last success is read from the state database at each scrape (the checkpoint's
``last_success_at``, set by succeeded and skipped runs), so it survives restarts.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Callable, Iterator, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ls_space_sync.pull.run import RunResult
from ls_space_sync.push.engine import PushResult
from ls_space_sync.store.state import utcnow

# Label Studio's webhook actions (label-studio-facts.md) and the ML backend's; anything else is
# counted as "other" so a sender cannot grow the label set.
KNOWN_ACTIONS = frozenset({
    "PROJECT_CREATED", "PROJECT_UPDATED", "PROJECT_DELETED", "TASKS_CREATED", "TASKS_DELETED",
    "ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED",
    "START_TRAINING",
})

DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class _LagCollector(Collector):
    def __init__(self, last_successes: Callable[[], dict[int, datetime | None]]):
        self._read = last_successes

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("ls_space_sync_seconds_since_last_success",
                                   "Seconds since the project's last succeeded or skipped sync run (+Inf: never)",
                                   labels=["project"])
        now = utcnow()
        for pid, when in sorted(self._read().items()):
            family.add_metric([str(pid)], math.inf if when is None else (now - when).total_seconds())
        yield family


class _ClusterCollector(Collector):
    def __init__(self, read: Callable[[], tuple[str, list[int], int]]):
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        me, owned, live = self._read()
        holder = GaugeMetricFamily("ls_space_sync_project_holder",
                                   "1 for each project this daemon schedules (several daemons share the projects)",
                                   labels=["project", "daemon"])
        for pid in sorted(owned):
            holder.add_metric([str(pid), me], 1)
        yield holder
        yield GaugeMetricFamily("ls_space_sync_live_daemons", "Daemons sharing the projects at the last heartbeat",
                                value=live)


class Metrics:
    """The daemon's metrics.

    Args:
        last_successes: returns ``{project id: last success time (UTC) or None}``, read at each scrape.
        cluster: with several daemons, returns ``(this daemon's id, the project ids it schedules,
            the number of live daemons)``, read at each scrape; ``None`` when alone.
    """

    def __init__(self, last_successes: Callable[[], dict[int, datetime | None]],
                 cluster: Callable[[], tuple[str, list[int], int]] | None = None):
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs = Counter("ls_space_sync_runs", "Sync runs by project, trigger and status",
                            ["project", "trigger", "status"], registry=r)
        self.rows = Counter("ls_space_sync_rows", "Rows changed by sync runs", ["project", "change"], registry=r)
        self.duration = Histogram("ls_space_sync_run_duration_seconds", "Wall time of sync runs",
                                  ["project"], buckets=DURATION_BUCKETS, registry=r)
        self.failures = Gauge("ls_space_sync_consecutive_failures", "Failed sync runs in a row", ["project"],
                              registry=r)
        self.webhooks = Counter("ls_space_sync_webhook_events", "Accepted webhook events by action", ["action"],
                                registry=r)
        self.rejected = Counter("ls_space_sync_webhook_rejected", "Rejected webhook requests by reason",
                                ["reason"], registry=r)
        self.mirror_passes = Counter("ls_space_sync_mirror_passes", "Mirror passes by pair, trigger and outcome",
                                     ["source", "target", "trigger", "outcome"], registry=r)
        self.mirror_tasks = Counter("ls_space_sync_mirror_tasks", "Tasks mirror pushes created, updated or deleted",
                                    ["source", "target", "change"], registry=r)
        self.webhooks_enabled = Gauge("ls_space_sync_webhooks_enabled",
                                      "1 if the webhook endpoints are on (server.webhook_secret set), else 0",
                                      registry=r)
        r.register(_LagCollector(last_successes))
        self.forwarded = Counter("ls_space_sync_webhooks_forwarded", "Webhooks passed to the daemon that holds the "
                                 "project, by outcome", ["outcome"], registry=r) if cluster is not None else None
        if cluster is not None:
            r.register(_ClusterCollector(cluster))

    def observe_run(self, result: RunResult, trigger: str) -> None:
        """Count a finished (succeeded or skipped) run and its rows."""
        p = str(result.project_id)
        self.runs.labels(p, trigger, result.status).inc()
        for change in ("inserted", "updated", "deleted"):
            self.rows.labels(p, change).inc(getattr(result, change))
        self.duration.labels(p).observe(result.seconds)

    def observe_failure(self, project_id: int, trigger: str, seconds: float | None) -> None:
        """Count a failed run (``seconds``: its wall time, if it got as far as being recorded)."""
        self.runs.labels(str(project_id), trigger, "failed").inc()
        if seconds is not None:
            self.duration.labels(str(project_id)).observe(seconds)

    def observe_locked(self, project_id: int, trigger: str) -> None:
        """Count a run refused because another sync of the project held its lock."""
        self.runs.labels(str(project_id), trigger, "locked").inc()

    def observe_mirror_pass(self, source: int, target: int | None, trigger: str, outcome: str,
                            pushes: Sequence[PushResult] = ()) -> None:
        """Count a mirror pass (``outcome``: quiet, changed, failed, locked) and its pushes' tasks.

        Args:
            pushes: the pass's pushes (``MirrorResult.pushes``).
        """
        self.mirror_passes.labels(str(source), "new" if target is None else str(target), trigger, outcome).inc()
        for p in pushes:
            for change, count in (("created", p.created), ("updated", p.updated), ("deleted", p.deleted)):
                self.mirror_tasks.labels(str(p.source_project), str(p.target_project), change).inc(count)

    def set_failures(self, project_id: int, failures: int) -> None:
        """Set the project's count of consecutive failed runs."""
        self.failures.labels(str(project_id)).set(failures)

    def set_webhooks_enabled(self, enabled: bool) -> None:
        """Record whether the webhook endpoints are on (the "webhook silent" alert needs it)."""
        self.webhooks_enabled.set(1 if enabled else 0)

    def webhook_event(self, action: str | None) -> None:
        """Count an accepted webhook event."""
        self.webhooks.labels(action if action in KNOWN_ACTIONS else "other").inc()

    def webhook_forwarded(self, ok: bool) -> None:
        """Count a webhook passed to the holder of its project (``ok``: it answered 2xx)."""
        if self.forwarded is not None:
            self.forwarded.labels("forwarded" if ok else "failed").inc()

    def webhook_rejected(self, reason: str) -> None:
        """Count a rejected webhook request."""
        self.rejected.labels(reason).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
