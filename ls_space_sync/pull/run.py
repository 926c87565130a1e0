"""``run_once(project)``: lock -> plan -> fetch -> commit version -> tag -> checkpoint.

The one code path behind ``ls-space-sync sync``, the daemon's schedule and webhooks.

Poll plan, cheapest first (Label Studio is the bottleneck; label-studio-facts.md):

1. ``GET /api/projects/{id}``: task count, label config, and the server clock, which fixes the
   run's *signpost* = server time at start - ``lag_seconds``.
2. Tasks with ``updated_at`` > stored cursor, full objects, keyset-paged by id. Each page is
   classified against the stored stamps and only changed tasks are staged on disk. Once the
   dataset exists, 1 and 2 go out together (neither needs the other's answer): the server time
   of 1 is then taken back by the time its answer took to arrive, so the signpost still falls
   before the moment 2 was sent.
3. If the server's task count differs from stored + new (or every ``full_scan_every`` runs): a
   full scan of stamps (a few keys per task) finds hard deletes, reused ids and counter-only
   changes (bulk prediction imports do not move ``updated_at``); those tasks are fetched in full.
4. One Lance version with everything (or none if nothing changed), tagged ``run-NNNNNN``.
5. Checkpoint: cursor := signpost (never past it), run marked succeeded.

So polling an unchanged project costs two requests whatever its size. Crash safety: the version
carries the run_id and its signpost (the cursor the checkpoint moves to); a run that finds an
earlier run of its project still marked running (its process died) and that run's version in
the dataset finishes that run's bookkeeping instead of writing the data again.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from ls_space_sync.errors import Retriable
from ls_space_sync.labelstudio.client import CORE_TASK_FIELDS, LabelStudioError, ProjectInfo, RequestCount
from ls_space_sync.logs import run_context
from ls_space_sync.media import run as media_run
from ls_space_sync.model.changes import ChangeSet, classify, full_scan_plan, stamp_of
from ls_space_sync.model.records import MalformedTask, data_columns, data_keys, parse_ts, schema_for, tasks_to_table
from ls_space_sync.store.compaction import merge_small_fragments
from ls_space_sync.store.dataset import ProjectStore, Root, Staging, local_dir
from ls_space_sync.store.leases import writer_lock
from ls_space_sync.store.state import FAILED, SKIPPED, SUCCEEDED, SyncRun
from ls_space_sync.views.refresh import ViewRefresh, refresh_project_views
from ls_space_sync.workspace import Workspace

log = logging.getLogger(__name__)


class IncompleteListing(LabelStudioError, Retriable):
    """A first sync's listing or a full scan found fewer tasks than the project's ``task_number``."""


def tag_name(seq: int) -> str:
    """The tag of a project's ``seq``-th pull run: ``run-000042``."""
    return f"run-{seq:06d}"


@dataclass
class RunResult:
    """What one ``run_once`` did. Counts are tasks; ``version``/``tag`` are ``None`` when skipped."""

    project_id: int
    run_id: str
    status: str
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    version: int | None = None
    tag: str | None = None
    full_scan: bool = False
    requests: int = 0
    seconds: float = 0.0
    recovered: list[str] = field(default_factory=list)
    views: list[ViewRefresh] = field(default_factory=list)

    def summary(self) -> str:
        """One line for people: ``project 3: run-000042 v7 +10 ~2 -1 (1.3 s, 4 requests)``."""
        what = f"{self.tag} v{self.version}" if self.tag else "no change"
        scan = ", full scan" if self.full_scan else ""
        return (
            f"project {self.project_id}: {what} +{self.inserted} ~{self.updated} -{self.deleted} "
            f"({self.seconds:.1f} s, {self.requests} requests{scan})"
        )


class Syncer(Workspace):
    """A :class:`ls_space_sync.workspace.Workspace` that runs the pull sync: ``run_once(project)``."""

    def run_once(
        self,
        project_id: int,
        *,
        full_scan: bool = False,
        trigger: str = "manual",
        progress: Callable[[int, int | None], None] | None = None,
        _after_commit: Callable[[], None] | None = None,
    ) -> RunResult:
        """Sync one project once; see the module docstring for the plan.

        Args:
            project_id: the Label Studio project id.
            full_scan: scan all stamps even if the task count adds up.
            trigger: who asked (``manual``, ``schedule``, ``webhook``), recorded with the run.
            progress: called as ``progress(tasks_done, tasks_expected_or_None)`` while fetching.

        Returns:
            The run's result; ``status`` is ``succeeded`` or ``skipped`` (nothing changed).

        Raises:
            ProjectLocked: another sync of this project is running.
            LabelStudioError: the server refused or could not be reached, or answered with a body of
                the wrong shape (``MalformedResponse``), or a listing came back shorter than the
                project's task count (``IncompleteListing``); the run is recorded failed and the
                store stays at its last version.
            MalformedTask: the server sent a task without id or timestamps (recorded failed).
        """
        with writer_lock(self.settings, self.state, project_id, lock_root=self.root):
            recovered = self._recover(project_id)
            run = self.state.start_run(project_id, trigger=trigger)
            with self.client.counting() as requests:
                try:
                    with run_context(run.run_id, project_id):
                        result = self._run(run, project_id, full_scan, progress, requests, _after_commit)
                except BaseException as exc:
                    self.state.finish_run(run.run_id, FAILED, error=_error_text(exc), requests=requests.n)
                    raise
            result.recovered = recovered
        if self.settings.views:  # after the lock: a view's refresh never holds up its source's next sync
            result.views = refresh_project_views(self, project_id)  # never raises; failures are recorded
        return result

    def _run(self, run: SyncRun, project_id: int, force_scan: bool,
             progress: Callable[[int, int | None], None] | None, requests: RequestCount,
             after_commit: Callable[[], None] | None) -> RunResult:
        store = self.store(project_id)
        fetch: Callable[[], None]
        if store.exists():
            plan = _RunPlan(self, run, store, project_id, store.schema(), progress)
            fetch = lambda: self._read_project_while(plan)  # noqa: E731
        else:  # a first sync: the label config gives the schema the pages are staged with
            info = self.client.project(project_id)
            plan = _RunPlan(self, run, store, project_id, schema_for(data_keys(info.label_config)), progress)
            plan.set_project(info, read_seconds=0.0)
            fetch = plan.fetch_changed
        try:
            fetch()
            missing = set(data_keys(plan.project.label_config)) - set(data_columns(plan.schema))
            if missing:
                log.warning("project %s: the label config reads data keys with no typed field in the dataset "
                            "(%s); they are kept in data_json", project_id, ", ".join(sorted(missing)))
            plan.full_scan_if_needed(force_scan)
            plan.check_first_listing()
            if plan.media:  # the run's media, stored and committed before the task version
                plan.media.fetch(plan.project.label_config)
            commit = plan.commit()
        finally:
            plan.staging.discard()
        signpost, scanned = plan.signpost, plan.scanned
        if commit is None:
            self.state.checkpoint(project_id, signpost=signpost, full_scan=scanned)
            finished = self.state.finish_run(run.run_id, SKIPPED, signpost=signpost, full_scan=scanned,
                                             requests=requests.n)
            return _result(finished, project_id)
        if after_commit:
            after_commit()  # tests: a crash between the commit and the bookkeeping
        store.tag(plan.tag, commit)
        if plan.media:
            plan.media.tag(plan.tag)
        self.state.checkpoint(project_id, signpost=signpost, full_scan=scanned)
        finished = self.state.finish_run(
            run.run_id, SUCCEEDED, version=commit, tag=plan.tag, signpost=signpost, full_scan=scanned,
            requests=requests.n, **plan.changes.counts,
        )
        return _result(finished, project_id)

    def _read_project_while(self, plan: "_RunPlan") -> None:
        """Read the project (``GET /api/projects/{id}``) in a thread while ``plan.fetch_changed()`` runs.

        The project read's server time (its Date header) can be stamped after the fetch sent its
        first request, so it is taken back by the whole time from before either request went
        out to the project's answer: the signpost then falls before the fetch was sent, as it
        does when the two run one after the other. Errors of the project read (a missing project
        answers the task list with an empty 404) are raised after the fetch returns.
        """
        started = time.monotonic()

        def read() -> tuple[ProjectInfo, float]:
            info = self.client.project(plan.project_id)
            return info, time.monotonic() - started

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ls-project") as pool:
            future = pool.submit(contextvars.copy_context().run, read)
            try:
                plan.fetch_changed()
            except BaseException:
                wait([future])  # the fetch's error is the one raised; the read's, if any, is dropped
                raise
            info, seconds = future.result()
        plan.set_project(info, read_seconds=seconds)

    def _recover(self, project_id: int) -> list[str]:
        """Finish the bookkeeping of runs whose process died (we hold the lock, so none is alive),
        and remove what they staged on disk."""
        store = self.store(project_id)
        recovered = []
        for run in self.state.running_runs(project_id):
            # Its staged rows are no use now: committed, or to be fetched again by this run.
            (staging_dir(self.root) / f"{run.run_id}.arrow").unlink(missing_ok=True)
            version = store.find_run(run.run_id)
            if version is None:
                self.state.finish_run(run.run_id, FAILED, error="the process stopped before committing a version")
                continue
            props = store.properties(version)
            tag = props.get("tag") or tag_name(run.seq)
            store.tag(tag, version)
            media_run.recover_tag(self.settings.media, store, tag)
            # Versions written by release 0.1.0 name the signpost "cursor".
            stored = props.get("signpost") or props.get("cursor")
            signpost = parse_ts(stored) if stored else None
            scanned = json.loads(props.get("full_scan", "false"))
            self.state.checkpoint(project_id, signpost=signpost, full_scan=scanned)
            self.state.finish_run(run.run_id, SUCCEEDED, version=version, tag=tag, signpost=signpost,
                                  full_scan=scanned, error="recovered: bookkeeping finished by a later run",
                                  **json.loads(props.get("counts", "{}")))
            log.warning("project %s: run %s had committed version %s before its process stopped; recorded it",
                        project_id, run.run_id, version)
            recovered.append(run.run_id)
        return recovered


class _RunPlan:
    """The state of one run between its project read and its commit."""

    def __init__(self, syncer: Syncer, run: SyncRun, store: ProjectStore, project_id: int, schema: pa.Schema,
                 progress: Callable[[int, int | None], None] | None):
        self.cfg = syncer.settings.sync
        self.merge_over = syncer.settings.compaction.max_small_fragments
        self.client = syncer.client
        self.run, self.store, self.schema, self.progress = run, store, schema, progress
        self.project_id = project_id
        self.info: ProjectInfo | None = None  # set_project(), before a full scan or the commit
        self._read_seconds = 0.0
        self.tag = tag_name(run.seq)
        self.include = None if self.cfg.task_fields == "all" else CORE_TASK_FIELDS
        self.cursor = syncer.state.cursor(project_id)
        # Stamps are read per page on the cheap path, and all at once only for a full scan.
        self.stored_count = store.count()
        self.staging = Staging(staging_dir(syncer.root) / f"{run.run_id}.arrow", schema)
        self.changes = ChangeSet()
        self.media = media_run.start(syncer.settings.media, self.client, store, run.run_id, staging_dir(syncer.root))
        self.seen: set[int] = set()
        self.scanned = self.stored_count == 0  # a first sync lists every task: it is a full scan
        self.done = 0
        self.all_stamps: dict[int, Any] | None = None  # every stored stamp, once a full scan read them

    @property
    def project(self) -> ProjectInfo:
        """The project read (:meth:`set_project` has been called)."""
        if self.info is None:
            raise RuntimeError("the project has not been read yet")
        return self.info

    def set_project(self, info: ProjectInfo, read_seconds: float) -> None:
        """Take the project read: its task count, label config and server clock; ``read_seconds``
        is how long after the fetch went out its Date header may have been stamped (0 when the
        read came first)."""
        self.info, self._read_seconds = info, read_seconds

    @property
    def signpost(self) -> datetime:
        """The server's clock when the run started (the project read's Date, less the time the
        read may have lagged the fetch), minus the lag that covers transactions still
        committing. The cursor never moves past it."""
        return self.project.server_time - timedelta(seconds=self.cfg.lag_seconds + self._read_seconds)

    def _stage(self, page: list[dict[str, Any]]) -> None:
        _check_page(page, self.project_id)
        stamps = {t["id"]: stamp_of(t) for t in page}
        stored = self.all_stamps if self.all_stamps is not None else self.store.stamps(list(stamps))
        page_changes = classify(stored, stamps)
        wanted = set(page_changes.upserts)
        if wanted:
            self.staging.write(tasks_to_table([t for t in page if t["id"] in wanted], self.schema, self.run.run_id))
            if self.media:
                self.media.collect(t for t in page if t["id"] in wanted)
        self.changes.extend(page_changes)
        self.seen.update(stamps)
        self.done += len(page)
        if self.progress:
            self.progress(self.done, None if self.stored_count or self.info is None else self.info.task_number)

    def fetch_changed(self) -> None:
        """Stage every task updated after the cursor (every task, on a first sync)."""
        since = self.cursor.cursor if self.stored_count else None
        for page in self.client.iter_task_pages(self.project_id, updated_after=since, page_size=self.cfg.page_size,
                                                include=self.include):
            self._stage(page)

    def _listing_short(self, listed: int, what: str) -> None:
        """Refuse a listing of ``listed`` tasks that is shorter than the project's ``task_number``.

        The count is read again first: tasks deleted while the listing ran make the first count
        too high, and a run must not fail for that. Tasks created after the listing passed make
        the second count too high too; the run then fails and the next poll succeeds, which
        costs a poll, where trusting a short listing would commit a wrong version.

        Raises:
            IncompleteListing: the listing is still shorter than the count read after it.
        """
        if listed >= self.project.task_number:
            return
        now = self.client.project(self.project_id).task_number
        if listed < now:
            raise IncompleteListing(
                f"project {self.project_id}: {what} returned {listed} tasks but the project has {now} "
                "(task_number); nothing was written, the store stays at its last version. Run again; if it "
                "repeats, the server or a proxy in front of it is cutting task listings short"
            )

    def check_first_listing(self) -> None:
        """On a first sync, refuse to commit a listing shorter than the project (see :meth:`_listing_short`)."""
        if not self.stored_count:
            self._listing_short(len(self.seen), "the first sync's listing")

    def full_scan_if_needed(self, force: bool) -> None:
        """Scan all stamps if forced, due, or the task count does not add up; stage what differs."""
        if not self.stored_count:
            return
        expected = self.stored_count + len(self.changes.inserts)
        due = self.cfg.full_scan_every > 0 and self.cursor.runs_since_full_scan + 1 >= self.cfg.full_scan_every
        if not (force or due or expected != self.project.task_number):
            return
        self.scanned = True
        server: dict[int, Any] = {}
        for page in self.client.iter_stamp_pages(self.project_id, page_size=self.cfg.scan_page_size):
            _check_page(page, self.project_id)
            server.update((t["id"], stamp_of(t)) for t in page)
        # A full scan is what proves hard deletes: it must have seen every task the server counts.
        self._listing_short(len(server), "the full scan")
        self.all_stamps = self.store.stamps()
        to_fetch, self.changes.deletes = full_scan_plan(self.all_stamps, server, done=self.seen)
        if to_fetch:
            for page in self.client.iter_task_pages(self.project_id, ids=to_fetch, page_size=self.cfg.page_size,
                                                    include=self.include):
                self._stage(page)

    def commit(self) -> int | None:
        """Write the change set as one version; return it, or ``None`` if nothing changed."""
        if not self.changes:
            return None
        props = {
            "run_id": self.run.run_id,
            "tag": self.tag,
            "signpost": self.signpost.isoformat(),
            "full_scan": json.dumps(self.scanned),
            "counts": json.dumps(self.changes.counts),
            "label_config": self.project.label_config,
        }
        try:
            merge_small_fragments(self.store, self.merge_over)
        except (OSError, RuntimeError, ValueError) as exc:  # an optimization: the run goes on without it
            log.warning("project %s: merging small fragments failed, committing without it: %s",
                        self.project_id, exc)
        done = self.store.commit(self.staging.reader(), self.changes.deletes, props)
        return None if done is None else done[0]


def _check_page(page: list[dict[str, Any]], project_id: int) -> None:
    for task in page:
        if not isinstance(task, dict) or type(task.get("id")) is not int:
            raise MalformedTask(f"project {project_id}: the server sent a task without an integer id: {str(task)[:200]}")
        for key in ("created_at", "updated_at"):
            try:
                parse_ts(task[key])
            except (KeyError, TypeError, ValueError):
                raise MalformedTask(
                    f"project {project_id}: task {task['id']} has no valid {key} timestamp "
                    f"({str(task.get(key))[:40]!r}); nothing was written, the store stays at its last version"
                ) from None


def _error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:2000]


def _result(run: SyncRun, project_id: int) -> RunResult:
    return RunResult(
        project_id=project_id,
        run_id=run.run_id,
        status=run.status,
        inserted=run.inserted,
        updated=run.updated,
        deleted=run.deleted,
        version=run.version,
        tag=run.tag,
        full_scan=run.full_scan,
        requests=run.requests,
        seconds=run.duration_seconds or 0.0,
    )


def staging_dir(root: Root) -> Path:
    """Where runs stage rows before their commit: on local disk, for an object store too."""
    return local_dir(root) / ".staging"
