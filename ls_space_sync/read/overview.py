"""One screen of the sync's state without the daemon: ``ls-space-sync status``.

Read from the state database (runs, checkpoints) and the store (tags) only: Label Studio is not
asked, so it answers when the server is down, in about a tenth of a second for a few projects.
The daemon's ``/health`` adds what only it knows (next poll, mirror passes in memory).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Iterable

from sqlalchemy import select

from ls_space_sync.store.dataset import ProjectStore, Root, stored_projects
from ls_space_sync.store.state import FAILED, ProjectCursor, StateDB, SyncRun, utcnow

# Runs read per project to count the failures in a row (more show as "50+").
RUNS_READ = 50


@dataclass
class ProjectOverview:
    """One project's line: its last pull run, how far behind it is, its failures, its tags.

    Times are aware UTC; ``lag_seconds`` is the time since the last succeeded or skipped run
    (``None``: never one), the number ``ls_space_sync_seconds_since_last_success`` exports.
    """

    project: int
    last_run_id: str | None = None
    last_status: str | None = None
    last_trigger: str | None = None
    last_started_at: datetime | None = None
    last_seconds: float | None = None
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    last_tag: str | None = None
    error: str | None = None
    last_success_at: datetime | None = None
    lag_seconds: float | None = None
    consecutive_failures: int = 0
    tags: int = 0
    latest_tag: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields, times as ISO 8601 strings (what ``status --json`` prints)."""
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(self).items()}


@dataclass
class Overview:
    """Every known project, sorted by id, as of ``at`` (UTC)."""

    at: datetime
    projects: list[ProjectOverview] = field(default_factory=list)

    @property
    def failing(self) -> list[int]:
        """Ids of the projects whose last run failed."""
        return [p.project for p in self.projects if p.consecutive_failures]

    def as_dict(self) -> dict[str, Any]:
        """``{"at", "failing", "projects": [ProjectOverview.as_dict()]}``."""
        return {"at": self.at.isoformat(), "failing": self.failing, "projects": [p.as_dict() for p in self.projects]}


def known_projects(state: StateDB, root: Root, configured: Iterable[int] = ()) -> list[int]:
    """The configured projects, those with a dataset under ``root`` and those with runs or a
    checkpoint in the state database (sorted)."""
    with state.Session() as s:
        ran = set(s.scalars(select(SyncRun.project_id).where(SyncRun.kind == "pull").distinct()))
        checked = set(s.scalars(select(ProjectCursor.project_id)))
    return sorted(set(configured) | set(stored_projects(root)) | ran | checked)


def project_overview(state: StateDB, root: Root, project_id: int) -> ProjectOverview:
    """One project's :class:`ProjectOverview`."""
    out = ProjectOverview(project_id)
    runs = state.runs(project_id, limit=RUNS_READ, kind="pull")
    if runs:
        last = runs[0]
        out.last_run_id, out.last_status, out.last_trigger = last.run_id, last.status, last.trigger
        out.last_started_at, out.last_seconds = last.started_at, last.duration_seconds
        out.inserted, out.updated, out.deleted = last.inserted, last.updated, last.deleted
        out.last_tag, out.error = last.tag, last.error
    for run in runs:
        if run.status != FAILED:
            break
        out.consecutive_failures += 1
    success = state.cursor(project_id).last_success_at
    out.last_success_at = success
    out.lag_seconds = round((utcnow() - success).total_seconds(), 3) if success else None
    tags = ProjectStore(root, project_id).tags()
    out.tags = len(tags)
    if tags:
        out.latest_tag = max(tags, key=lambda name: (tags[name], name))
    return out


def overview(state: StateDB, root: Root, configured: Iterable[int] = (),
             only: Iterable[int] | None = None) -> Overview:
    """The :class:`Overview` of ``only`` (default: every :func:`known_projects`)."""
    ids = sorted(set(only)) if only else known_projects(state, root, configured)
    return Overview(utcnow(), [project_overview(state, root, pid) for pid in ids])


def age(seconds: float | None) -> str:
    """A duration for people: ``45 s``, ``12 min``, ``3.5 h``, ``2.0 d``; ``never`` for ``None``."""
    if seconds is None:
        return "never"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def lines(view: Overview, width: int = 100) -> list[str]:
    """The table ``ls-space-sync status`` prints: a summary line, a header, one line per project."""
    n = len(view.projects)
    failing = view.failing
    head = f"{n} project{'s' if n != 1 else ''}"
    head += f", {len(failing)} failing ({', '.join(map(str, failing))})" if failing else ", none failing"
    out = [f"{head} - {view.at:%Y-%m-%d %H:%M:%S}Z",
           f"{'project':>7}  {'last run (UTC)':19}  {'trigger':8} {'status':9} {'changes':>14}  {'lag':>7}  "
           f"{'fails':>5}  {'tags':>5}  {'latest tag':12} error"]
    for p in view.projects:
        when = f"{p.last_started_at:%Y-%m-%d %H:%M:%S}" if p.last_started_at else "-"
        changes = f"+{p.inserted} ~{p.updated} -{p.deleted}" if p.last_status else "-"
        fails = f"{p.consecutive_failures}{'+' if p.consecutive_failures >= RUNS_READ else ''}"
        line = (f"{p.project:>7}  {when:19}  {p.last_trigger or '-':8} {p.last_status or 'never run':9} "
                f"{changes:>14}  {age(p.lag_seconds):>7}  {fails:>5}  {p.tags:>5}  {p.latest_tag or '-':12} ")
        error = " ".join((p.error or "").split())
        room = max(width - len(line), 20)
        out.append((line + (error if len(error) <= room else error[:room - 3] + "...")).rstrip())
    return out
