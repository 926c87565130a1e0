"""The status page the daemon serves at ``GET /`` to browsers: what ``/health`` reports, plus the
tags, the last diffs and the webhook state of each project, rendered server-side.

The page's numbers are :func:`ls_space_sync.service.health.health_report`'s, read in the same
request, so the page and ``/health`` agree. The rest comes from the state database (runs), the
Lance datasets (tags: dates, rows and bytes, from the version manifests; no transaction is read,
so a page costs ~0.1 s at 300 tags) and, for the titles, one ``GET /api/projects/<id>`` per project
to Label Studio, cached (:class:`ProjectTitles`). The template (``templates/status.html``, Jinja2)
escapes everything it shows: titles, errors and tags come from outside.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

from jinja2 import Environment, PackageLoader, StrictUndefined

from ls_space_sync.errors import LsSpaceSyncError
from ls_space_sync.labelstudio.client import LabelStudioClient
from ls_space_sync.service.health import DaemonView, health_report
from ls_space_sync.settings import Settings
from ls_space_sync.store.dataset import ProjectStore, StoreError, version_time
from ls_space_sync.store.state import utcnow

# How much of each project the page lists: the newest tags and the newest runs that wrote a version.
MAX_TAGS = 10
MAX_DIFFS = 5
RUNS_READ = 50  # runs read to find the diffs and the last webhook run among skipped polls


@dataclass
class TagRow:
    """A tagged version: when it was committed (UTC), its task count and the bytes of its data files."""

    name: str
    version: int
    created_at: datetime
    rows: int
    bytes: int


@dataclass
class DiffRow:
    """A run that committed a version: its change set's counts."""

    run_id: str
    tag: str | None
    version: int | None
    trigger: str
    finished_at: datetime | None
    inserted: int
    updated: int
    deleted: int


@dataclass
class ProjectRow:
    """One project on the page. ``health`` is its ``/health`` entry as served in the same request."""

    id: int
    title: str | None
    url: str | None  # the project in Label Studio
    health: dict[str, Any]
    cursor: datetime | None  # the store holds every change made before this (the last signpost)
    lag_seconds: float | None  # now - cursor
    tags: list[TagRow] = field(default_factory=list)
    tag_count: int = 0
    store_error: str | None = None
    diffs: list[DiffRow] = field(default_factory=list)
    webhook_pending_at: datetime | None = None  # a webhook-requested run (or pass) is due then
    last_webhook_run_at: datetime | None = None


@dataclass
class StatusPage:
    """Everything the template shows. ``health`` is the ``/health`` report it was built from."""

    generated_at: datetime
    health: dict[str, Any]
    projects: list[ProjectRow]
    label_studio_url: str | None


class ProjectTitles:
    """Project titles from Label Studio for the page, cached ``ttl`` seconds.

    The page must render while Label Studio is down, so each lookup is one request with a short
    timeout and no retry; a failed lookup is tried again ``retry_after`` seconds later and the page
    shows the id meanwhile. Its own HTTP client, so the request counts of sync runs stay exact.

    Args:
        settings: the daemon's settings (Label Studio URL and API key).
        ttl: seconds a title is kept.
        retry_after: seconds before a failed lookup is tried again.
        timeout: seconds per request.
    """

    def __init__(self, settings: Settings, ttl: float = 300.0, retry_after: float = 60.0, timeout: float = 2.0):
        self.settings = settings
        self.ttl, self.retry_after, self.timeout = ttl, retry_after, timeout
        self._cache: dict[int, tuple[str | None, float]] = {}  # id -> (title or None if failed, monotonic expiry)
        self._lock = threading.Lock()

    def get(self, project_ids: Iterable[int]) -> dict[int, str | None]:
        """The titles of ``project_ids`` (``None`` where unknown), looking up the stale ones."""
        ids = list(project_ids)
        with self._lock:
            now = time.monotonic()
            stale = [pid for pid in ids if pid not in self._cache or self._cache[pid][1] <= now]
            if stale:
                self._lookup(stale)
            return {pid: self._cache.get(pid, (None, 0.0))[0] for pid in ids}

    def _lookup(self, ids: list[int]) -> None:
        try:
            url, key = self.settings.require_label_studio()
            client = LabelStudioClient(url, key, timeout=self.timeout, retries=0)
        except LsSpaceSyncError:
            for pid in ids:
                self._cache[pid] = (None, time.monotonic() + self.retry_after)
            return
        try:
            for pid in ids:
                try:
                    title: str | None = client.project(pid).title
                    expiry = self.ttl
                except LsSpaceSyncError:
                    title, expiry = self._cache.get(pid, (None, 0.0))[0], self.retry_after
                self._cache[pid] = (title, time.monotonic() + expiry)
        finally:
            client.close()


def _tags(store: ProjectStore) -> tuple[list[TagRow], int]:
    """The newest :data:`MAX_TAGS` tags of a project, newest first, and how many there are."""
    if not store.exists():
        return [], 0
    tags = store.tags()
    manifests = {v["version"]: v for v in store.dataset().versions()}
    rows = []
    for name, version in tags.items():
        meta = manifests.get(version)
        if meta is None:  # a tag of a version cleaned up by hand
            continue
        rows.append(TagRow(name, version, version_time(meta["timestamp"]),
                           int(meta["metadata"].get("total_rows", 0)),
                           int(meta["metadata"].get("total_files_size", 0))))
    rows.sort(key=lambda t: (t.version, t.name), reverse=True)
    return rows[:MAX_TAGS], len(tags)


def build_status(daemon: DaemonView, titles: ProjectTitles | None = None) -> StatusPage:
    """Gather the page's data: the ``/health`` report, then per project its tags, diffs and webhook state.

    Args:
        daemon: the running daemon (its settings, state database and scheduler).
        titles: where project titles come from; ``None`` shows ids only.

    Returns:
        The page; a project whose dataset cannot be read has ``store_error`` set, the rest is shown.
    """
    health = health_report(daemon)
    now = utcnow()
    settings = daemon.settings
    ids = [int(pid) for pid in health["projects"]]
    known = titles.get(ids) if titles is not None else {}
    ls_url = settings.label_studio.url
    projects = []
    for pid in ids:
        cursor = daemon.state.cursor(pid).cursor
        row = ProjectRow(
            id=pid, title=known.get(pid), url=f"{ls_url}/projects/{pid}/data" if ls_url else None,
            health=health["projects"][str(pid)], cursor=cursor,
            lag_seconds=round((now - cursor).total_seconds(), 1) if cursor else None,
        )
        try:
            row.tags, row.tag_count = _tags(ProjectStore(settings.resolved_store_root, pid))
        except (StoreError, ValueError, OSError) as exc:
            row.store_error = f"{type(exc).__name__}: {exc}"
        for run in daemon.state.runs(pid, limit=RUNS_READ, kind="pull"):
            if run.version is not None and len(row.diffs) < MAX_DIFFS:
                row.diffs.append(DiffRow(run.run_id, run.tag, run.version, run.trigger, run.finished_at,
                                         run.inserted, run.updated, run.deleted))
            if run.trigger == "webhook" and row.last_webhook_run_at is None:
                row.last_webhook_run_at = run.started_at
        jobs = [f"webhook-{pid}"] + [f"webhook-mirror-{key}" for key in row.health.get("mirrors", [])]
        pending = [job.next_run_time for job in map(daemon.scheduler.get_job, jobs) if job and job.next_run_time]
        row.webhook_pending_at = min(pending) if pending else None
        projects.append(row)
    return StatusPage(generated_at=now, health=health, projects=projects, label_studio_url=ls_url)


# --- rendering -------------------------------------------------------------------------------


def _time(value: datetime | str | None) -> str:
    """``2026-12-01 09:01:16Z`` (UTC, to the second), or an em dash."""
    if value is None:
        return "\u2014"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return f"{value.astimezone(timezone.utc):%Y-%m-%d %H:%M:%SZ}"


def _iso(value: datetime | str | None) -> str:
    """The ISO 8601 form, as ``/health`` writes it (a ``<time datetime>`` attribute)."""
    if value is None:
        return ""
    return value if isinstance(value, str) else value.isoformat()


def _seconds(value: float | None) -> str:
    """A duration for people: ``0.4 s``, ``12 s``, ``3 min 20 s``, ``2 h 5 min``, ``3 d 4 h``."""
    if value is None:
        return "\u2014"
    if value < 10:
        return f"{value:.1f} s"
    s = int(value)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _size(value: int | None) -> str:
    """Bytes for people, powers of 1,000: ``634 B``, ``12.3 kB``, ``4.5 MB``."""
    if value is None:
        return "\u2014"
    size = float(value)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"  # unreachable; for mypy


_env = Environment(loader=PackageLoader("ls_space_sync.service", "templates"), autoescape=True,
                   undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
_env.filters.update(time=_time, iso=_iso, seconds=_seconds, size=_size)


def render_status(page: StatusPage, version: str, refresh_seconds: int = 30) -> str:
    """The page as HTML (autoescaped: every value is text, never markup).

    Args:
        page: from :func:`build_status`.
        version: the service's version, shown in the footer.
        refresh_seconds: the page reloads itself this often (a meta refresh; the page has no script).
    """
    return _env.get_template("status.html").render(page=page, version=version, refresh_seconds=refresh_seconds)


def prefers_html(accept: str | None) -> bool:
    """Whether an ``Accept`` header ranks ``text/html`` above ``application/json`` (RFC 9110 q-values).

    Browsers send ``text/html,...,*/*;q=0.8``: HTML. ``curl``, Label Studio's ML-backend check and
    a missing header (``*/*``, equal ranks): JSON, as ``/`` answered before the page existed.
    """
    if not accept:
        return False

    def rank(kind: str) -> tuple[float, int]:
        best: tuple[float, int] = (0.0, -1)  # (q, specificity): the most specific matching range wins
        for part in accept.split(","):
            media, *params = (p.strip() for p in part.split(";"))
            q = 1.0
            for param in params:
                name, _, value = param.partition("=")
                if name.strip().lower() == "q":
                    try:
                        q = float(value)
                    except ValueError:
                        q = 0.0
            media = media.lower()
            main, _, sub = kind.partition("/")
            specificity = {kind: 2, f"{main}/*": 1, "*/*": 0}.get(media, -1)
            if specificity > best[1]:
                best = (q, specificity)
        return best

    return rank("text/html")[0] > rank("application/json")[0]
