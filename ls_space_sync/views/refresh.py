"""Refresh a materialized view after its source's runs: incremental by task id, one view version per
source version, tagged with the source's tags.

The invariant: for every source version ``V`` a view version reflects, ``view@V ==
transform(source@V)`` (as a set of rows by primary key), and the view version carries the tags of
``V``, so ``view@run-000042 == transform(source@run-000042)``.

How a refresh goes, for a view whose latest version reflects source version ``S`` with the same
transform fingerprint, and the source now at ``V``:

1. Each tagged source version in ``(S, V]`` (``V`` itself always), oldest first, is one step.
2. A step's change set: the tasks whose row differs between the two source versions. Every row a
   sync writes carries its run's ``run_id`` (:mod:`ls_space_sync.model.records`) and compaction
   keeps it, so a task was inserted or updated exactly when its ``run_id`` at the new version is
   not one of the run ids present at the old one, and deleted when its id is gone. Two columns of
   each version are read (``id, run_id``); this holds however many versions apart they are.
3. The changed tasks' rows are read from the new version (a Lance filter on ``id``), transformed,
   and committed as one view version: one Lance ``Update`` transaction that deletes the changed
   tasks' old view rows (deletion vectors on the fragments that hold them) and adds the new rows
   as new fragments (:func:`ls_space_sync.views.write.replace_tasks`).
4. The view version is tagged with the source version's tags.

A full rebuild (the transform over the whole source version, written as an overwrite: a new
version, older ones and their tags kept) replaces the steps when the view does not exist yet, its
fingerprint differs from the configured transform's, ``S`` is no longer in the source (compacted
away), or a step changes more than :data:`FULL_SHARE` of the tasks.

A refresh that fails (the transform raised, returned rows a view cannot store) commits nothing:
the view stays at its last version, the failure is recorded (a ``sync_runs`` row of kind ``view``
with the error), and the next refresh starts again from the view's last version.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import lance
import pyarrow.compute as pc

from ls_space_sync.settings import Settings, StoreRoot, ViewSettings
from ls_space_sync.store.dataset import ProjectStore
from ls_space_sync.store.state import FAILED, SKIPPED, SUCCEEDED, StateDB
from ls_space_sync.views import transforms, write
from ls_space_sync.views.store import ViewLocked, ViewStore, view_lock
from ls_space_sync.views.transforms import Transform

log = logging.getLogger(__name__)

#: A step that changes more than this share of the source's tasks is done as a full rebuild.
FULL_SHARE = 0.25
#: How long a sync run's refresh waits for the previous run's refresh of the same view (seconds):
#: the daemon's runs of a project can follow each other faster than a heavy view refreshes.
HOOK_WAIT_SECONDS = 60.0


class Workspace(Protocol):
    """What a refresh needs of a :class:`ls_space_sync.workspace.Workspace` (which is one): no Label
    Studio client, so ``views`` commands work without a server configured."""

    settings: Settings
    state: StateDB
    root: Path | StoreRoot

    def store(self, project_id: int) -> ProjectStore: ...


class StoreWorkspace:
    """The settings, state database and store root without a Label Studio client (``views`` commands)."""

    def __init__(self, settings: Settings, state: StateDB | None = None):
        self.settings = settings
        self.state = state if state is not None else StateDB(settings.resolved_state_url)
        self.root = settings.resolved_store_root

    def store(self, project_id: int) -> ProjectStore:
        """The dataset of a project under the store root."""
        return ProjectStore(self.root, project_id)

    def close(self) -> None:
        """Close the state database's pool."""
        self.state.dispose()


@dataclass
class ViewRefresh:
    """What one refresh of one view did.

    ``status`` is ``succeeded`` (view versions were committed or tagged), ``skipped`` (already
    current) or ``failed`` (``error`` says why; the view is at its previous version).
    ``versions`` are the view versions committed, ``source_version`` the source version the view
    now reflects; ``tasks`` the tasks recomputed (all of them in a full rebuild); ``inserted`` the
    view rows written and ``deleted`` those removed (a recomputed row counts in both; ``updated``
    stays 0); ``seconds`` wall time.
    """

    view: str
    project_id: int
    status: str
    full: bool = False
    versions: list[int] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    source_version: int | None = None
    tasks: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    seconds: float = 0.0
    error: str | None = None
    run_id: str | None = None

    def summary(self) -> str:
        """One line for people: ``view regions (project 3): v4 incremental, 10 tasks, +12 ~3 -2 rows``."""
        head = f"view {self.view} (project {self.project_id})"
        if self.status == FAILED:
            return f"{head}: refresh failed, the view stays at its last version: {self.error}"
        if self.status == SKIPPED:
            return f"{head}: current (source v{self.source_version})"
        mode = "full rebuild" if self.full else "incremental"
        tags = f" [{', '.join(self.tags)}]" if self.tags else ""
        versions = ",".join(f"v{v}" for v in self.versions) or "no new version"
        return (f"{head}: {versions}{tags} {mode} to source v{self.source_version}, {self.tasks} tasks, "
                f"+{self.inserted} ~{self.updated} -{self.deleted} rows ({self.seconds:.2f} s)")


def views_of(ws: Workspace, project_id: int | None = None) -> list[ViewSettings]:
    """The configured views (of one source project, if given)."""
    return [v for v in ws.settings.views if project_id is None or v.project == project_id]


def find_view(ws: Workspace, name: str) -> ViewSettings:
    """The configured view called ``name``.

    Raises:
        ViewConfigError: no such view in ``views:`` (the message lists the configured ones).
    """
    for view in ws.settings.views:
        if view.name == name:
            return view
    known = ", ".join(v.name for v in ws.settings.views) or "none"
    raise transforms.ViewConfigError(f"no view named {name!r} in the config's views: section (configured: {known})")


def view_store(ws: Workspace, view: ViewSettings) -> ViewStore:
    """The view's dataset, beside its source project's."""
    return ViewStore(ws.store(view.project), view.name)


def refresh_project_views(ws: Workspace, project_id: int) -> list[ViewRefresh]:
    """Refresh every view of a project after one of its sync runs; never raises.

    Returns the refreshes that committed or failed (views already current are left out).

    A view that fails is recorded failed (see :func:`refresh_view`) and logged; a view another
    refresh still holds after :data:`HOOK_WAIT_SECONDS` is left to the next run. The source's
    sync is never affected.
    """
    out = []
    for view in views_of(ws, project_id):
        try:
            result = refresh_view(ws, view, trigger="run", wait_seconds=HOOK_WAIT_SECONDS)
        except ViewLocked as exc:
            log.info("%s", exc)
            continue
        except Exception as exc:  # noqa: BLE001 - a view must never fail its source's sync
            log.warning("view %s of project %s: refresh failed: %s", view.name, project_id, exc)
            continue
        if result.status == SKIPPED:  # already current
            continue
        log.log(logging.WARNING if result.status == FAILED else logging.INFO, "%s", result.summary())
        out.append(result)
    return out


def refresh_view(ws: Workspace, view: ViewSettings, *, rebuild: bool = False, trigger: str = "manual",
                 wait_seconds: float = 0) -> ViewRefresh:
    """Bring one view up to its source's latest version (see the module docstring).

    Args:
        ws: the workspace (settings, state database, store root).
        view: the view's settings.
        rebuild: recompute the whole view even if an incremental refresh would do.
        wait_seconds: how long to wait for another refresh of the view to finish (then this one
            catches up from where that one left the view).
        trigger: who asked (``run`` after a sync, ``manual``), for the log; the ``sync_runs`` row of
            kind ``view`` has the view's name as its ``trigger``.

    Returns:
        The refresh; ``status`` ``failed`` when the transform failed (recorded, nothing committed).

    Raises:
        ViewLocked: another refresh of this view is running.
    """
    started = time.perf_counter()
    source = ws.store(view.project)
    store = ViewStore(source, view.name)
    result = ViewRefresh(view.name, view.project, SKIPPED)
    if not source.exists():
        return result
    with view_lock(ws.root, view.project, view.name, wait_seconds):
        run = None
        try:
            transform = transforms.load(view)
            steps, full = _plan(source, store, transform, rebuild)
            result.source_version = steps[-1] if steps else int(store.state().get("source_version", 0)) or None
            if not steps:
                return result
            log.debug("view %s: refresh (%s) through source versions %s", view.name, trigger, steps)
            run = ws.state.start_run(view.project, kind="view", trigger=view.name)
            result.run_id = run.run_id
            _do_steps(source, store, view, transform, steps, full, run.run_id, result)
        except Exception as exc:  # noqa: BLE001 - recorded with its message; the view stays as it was
            result.status, result.error = FAILED, _error_text(exc)
            result.seconds = time.perf_counter() - started
            if run is None:
                run = ws.state.start_run(view.project, kind="view", trigger=view.name)
                result.run_id = run.run_id
            ws.state.finish_run(run.run_id, FAILED, error=result.error)
            return result
        result.status = SUCCEEDED
        result.seconds = time.perf_counter() - started
        ws.state.finish_run(run.run_id, SUCCEEDED, version=result.versions[-1] if result.versions else None,
                            tag=result.tags[-1] if result.tags else None, full_scan=result.full,
                            inserted=result.inserted, updated=result.updated, deleted=result.deleted)
        return result


def _plan(source: ProjectStore, store: ViewStore, transform: Transform, rebuild: bool) -> tuple[list[int], bool]:
    """The source versions to step through, oldest first, and whether the first is a full rebuild."""
    latest = source.dataset().version
    state = store.state()
    reflected = int(state["source_version"]) if state.get("source_version") else None
    if rebuild or reflected is None or state.get("fingerprint") != transform.fingerprint:
        return [latest], True
    existing = {v["version"] for v in source.dataset().versions()}
    if reflected not in existing or reflected > latest:
        return [latest], True
    if reflected == latest:
        _tag_like_source(source, store, latest, store.dataset().version)  # a tag made after the last refresh
        return [], False
    tagged = sorted({v for v in source.tags().values() if reflected < v < latest and v in existing})
    return tagged + [latest], False


def _do_steps(source: ProjectStore, store: ViewStore, view: ViewSettings, transform: Transform, steps: list[int],
              full: bool, run_id: str, result: ViewRefresh) -> None:
    for i, target in enumerate(steps):
        if full and i == 0:
            version, tasks, inserted = write.full(source, store, view, transform, target, run_id)
            result.full, result.tasks, result.inserted = True, result.tasks + tasks, result.inserted + inserted
        else:
            prev = int(store.state()["source_version"])
            upserts, deletes = changed_tasks(source.dataset(prev), source.dataset(target))
            total = source.dataset(target).count_rows()
            if len(upserts) + len(deletes) > FULL_SHARE * max(total, 1):
                version, tasks, inserted = write.full(source, store, view, transform, target, run_id)
                result.full, result.tasks, result.inserted = True, result.tasks + tasks, result.inserted + inserted
            else:
                version, stats = write.incremental(source, store, view, transform, target, upserts, deletes, run_id)
                result.tasks += len(set(upserts) | set(deletes))
                result.inserted += stats.get("num_inserted_rows", 0)
                result.updated += stats.get("num_updated_rows", 0)
                result.deleted += stats.get("num_deleted_rows", 0)
        result.versions.append(version)
        result.tags += _tag_like_source(source, store, target, version)
        result.source_version = target


def _tag_like_source(source: ProjectStore, store: ViewStore, source_version: int, view_version: int) -> list[str]:
    names = sorted(name for name, v in source.tags().items() if v == source_version)
    for name in names:
        store.set_tag(name, view_version)
    return names


def changed_tasks(old: lance.LanceDataset, new: lance.LanceDataset) -> tuple[list[int], list[int]]:
    """The change set between two versions of a source: ``(inserted or updated ids, deleted ids)``, sorted.

    Reads ``id`` and ``run_id`` of each version (see the module docstring, step 2). A reused id
    (deleted and created again) is in the first list.
    """
    before = old.to_table(columns=["id", "run_id"])
    after = new.to_table(columns=["id", "run_id"])
    runs_before = pc.unique(before.column("run_id"))
    written = pc.invert(pc.is_in(after.column("run_id"), value_set=runs_before, skip_nulls=False))
    upserts = pc.filter(after.column("id"), written).to_pylist()
    gone = pc.invert(pc.is_in(before.column("id"), value_set=after.column("id").combine_chunks()))
    deletes = pc.filter(before.column("id"), gone).to_pylist()
    return sorted(upserts), sorted(deletes)


def _error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:2000]
