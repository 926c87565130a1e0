"""Push stored versions back into Label Studio: rows of a dataset -> tasks of a project.

A push reads the rows of one stored version (a tag, a version number or a time), optionally
filtered with Lance's own SQL filter, and makes a Label Studio project hold them as tasks: data,
meta, annotations (``result``, ``was_cancelled``, ``ground_truth``, ``lead_time``; ``completed_by``
when the user exists on the server, else the server records the pushing user) and predictions
(``result``, ``score``, ``model_version``). Drafts, comments and reviews are not pushed.

**Id map.** Each pushed task is a *link* in the state database: (source project, source task id,
source ``created_at``) <-> (target project, target task id), with the source row's stamp and the
hash of the content both sides agreed on at the last push. A later push sends only rows whose
stamp moved and whose content differs from that hash; a mirror reads the same links the other
way round to push target-side edits back.

**Updates are in place.** A changed task keeps its target id: ``PATCH`` of data and meta if they
differ; annotations and predictions are matched by content; the unmatched are ``PATCH``-ed pairwise
with only the fields that differ, then deleted or created. Task ids, comments and links to tasks
survive a push. No write sets a ground truth flag that would make Label Studio clear another
annotation's (:func:`ls_space_sync.taskdiff.annotation_ops`), and the hash a link records is the
content the target holds after the writes, read back where the server changed more than was named.

**Identity.** A target task is the link's only while its ``created_at`` is the one read right
after its import: SQLite Label Studio gives a new task ``max(id)+1``, so a deleted target task's
id can come back for someone else's task. Such a task is never updated or deleted: the row is
imported again and the push counts it (``reused``). A link from before ``created_at`` was recorded
is trusted only if the task carries this source's origin mark for that row.

**Crash safety.** Links are written right after each chunk's import returns, and every pushed
task carries its origin in ``meta["ls_space_sync"]`` (dataset, version, source project, id and
``created_at``). A push that finds the previous push to the same target unfinished scans the
target's task meta and links what an interrupted import created, so nothing is imported twice.
Imports are never retried after the request was sent (:meth:`LabelStudioClient._once`).

What a task's content is, its import JSON, the in-place ops and the checks before a write are
pure functions in :mod:`ls_space_sync.taskdiff`; this module is the engine around them: Lance
reads, requests to Label Studio, and the id map in the state database.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

import pyarrow as pa
from sqlalchemy import delete, or_, select

from ls_space_sync.labelstudio.client import LabelStudioClient, LabelStudioError, ServerUnavailable
from ls_space_sync.logs import run_context
from ls_space_sync.model.changes import stamp_of
from ls_space_sync.model.records import row_to_task
from ls_space_sync.model.taskdiff import (  # noqa: F401 - re-exported: the push's errors and origin key are part of its API
    ORIGIN_KEY,
    LabelConfigMismatch,
    Op,
    PushError,
    annotation_author,
    batch_result_names,
    batch_stamps,
    check_label_config,
    content_hash,
    import_payload,
    plan_task_ops,
    require_results,
    result_names,
    sets_ground_truth,
    task_ops,
)
from ls_space_sync.store.dataset import ProjectStore, local_dir
from ls_space_sync.store.leases import PUSH, writer_lock
from ls_space_sync.store.state import FAILED, RUNNING, SKIPPED, SUCCEEDED, PushLink, PushRun, StateDB, SyncRun, utcnow

log = logging.getLogger(__name__)

# --- the id map ------------------------------------------------------------------------------

@dataclass
class _Link:
    """A link seen from the pushing side ("here") towards the side pushed to ("there")."""

    row_id: int | None
    forward: bool  # here is the link's source side
    here_id: int
    here_created: int | None
    here_stamp: str | None
    there_id: int
    there_created: int | None
    there_stamp: str | None
    content_hash: str | None
    dirty: bool = False

    @classmethod
    def of(cls, row: PushLink, here_project: int) -> "_Link":
        if row.source_project == here_project:
            return cls(row.id, True, row.source_id, row.source_created, row.source_stamp, row.target_id,
                       row.target_created, row.target_stamp, row.content_hash)
        return cls(row.id, False, row.target_id, row.target_created, row.target_stamp, row.source_id,
                   row.source_created, row.source_stamp, row.content_hash)

    def columns(self, here_project: int, there_project: int) -> dict[str, Any]:
        h = {"project": here_project, "id": self.here_id, "created": self.here_created, "stamp": self.here_stamp}
        t = {"project": there_project, "id": self.there_id, "created": self.there_created, "stamp": self.there_stamp}
        src, dst = (h, t) if self.forward else (t, h)
        out = {f"source_{k}": v for k, v in src.items()} | {f"target_{k}": v for k, v in dst.items()}
        out["content_hash"] = self.content_hash
        return out


def apply_ops(client: LabelStudioClient, task_id: int, ops: Sequence[Op]) -> None:
    """Send ``ops`` (from :func:`ls_space_sync.taskdiff.task_ops`) for one task, one request each.

    ``patch_task`` is ``update_task(task_id, body)``; ``create_<kind>`` is ``create_<kind>(task_id,
    body)``; ``update_<kind>`` and ``delete_<kind>`` name the annotation or prediction id themselves.

    Raises:
        ValueError: an op this function does not know. LabelStudioError: the server refused one.
    """
    for kind, *args in ops:
        verb, _, what = kind.partition("_")
        if kind == "patch_task":
            client.update_task(task_id, *args)
        elif what in ("annotation", "prediction") and verb in ("create", "update", "delete"):
            # A create names the task; an update or delete names the annotation or prediction.
            getattr(client, kind)(*((task_id, *args) if verb == "create" else args))
        else:
            raise ValueError(f"unknown op {kind}")


def fetch_tasks(client: LabelStudioClient, project_id: int, ids: Sequence[int], page_size: int) -> dict[int, dict]:
    """Current server tasks by id (full objects); ids the server no longer has are absent.

    Dense ids are read as keyset pages over their range; scattered ones one ``GET`` each.
    """
    ids = sorted(set(ids))
    if not ids:
        return {}
    if ids[-1] - ids[0] + 1 <= 4 * len(ids):
        return {t["id"]: t for page in client.iter_task_pages(project_id, ids=ids, page_size=page_size) for t in page}
    out = {}
    for task_id in ids:
        try:
            out[task_id] = client.task(task_id)
        except LabelStudioError as exc:
            if exc.status != 404:
                raise
    return out


# --- the push ----------------------------------------------------------------------------

@dataclass
class PushResult:
    """What one push did. Counts are tasks."""

    source_project: int
    target_project: int
    version: int
    run_id: str
    status: str = RUNNING
    created: int = 0
    updated: int = 0  # changed in place
    deleted: int = 0
    unchanged: int = 0  # linked rows that needed nothing
    echoes: int = 0  # rows whose stamp moved but whose content is what was last pushed
    resumed: int = 0  # tasks found in the target by their origin meta and linked
    conflicts: int = 0  # both sides changed since the last push; the source won
    reused: int = 0  # linked target ids that now hold another task (Label Studio reused the id): left alone
    authors_dropped: int = 0  # annotations whose completed_by is not a user of the server
    media_uploaded: int = 0  # files re-uploaded (``media="reupload"``), each sha256 once
    media_rewritten: int = 0  # task media values pointed at a re-uploaded file
    new_project: bool = False
    requests: int = 0
    seconds: float = 0.0

    @property
    def moved(self) -> int:
        """Tasks created, updated or deleted in the target."""
        return self.created + self.updated + self.deleted

    def summary(self) -> str:
        """One line: ``push project 3 v7 -> project 9: +10 ~2 -1 (1.3 s, 6 requests)``."""
        extra = [f"{n} {what}" for n, what in ((self.unchanged, "unchanged"), (self.resumed, "resumed"),
                 (self.conflicts, "conflicts (source won)"),
                 (self.reused, "target ids reused by another task (left alone)"),
                 (self.authors_dropped, "authors not on server"),
                 (self.media_uploaded, "media files re-uploaded"))
                 if n]
        new = " (new project)" if self.new_project else ""
        return (f"push project {self.source_project} v{self.version} -> project {self.target_project}{new}: "
                f"+{self.created} ~{self.updated} -{self.deleted}{'; ' + ', '.join(extra) if extra else ''} "
                f"({self.seconds:.1f} s, {self.requests} requests)")

    def as_dict(self) -> dict[str, Any]:
        """The result as plain JSON-able values."""
        return asdict(self)


def push(
    syncer: Any,
    source_project: int,
    *,
    target_project: int | None = None,
    version: int | str | None = None,
    as_of: Any = None,
    ids: Sequence[int] | None = None,
    where: str | None = None,
    delete: bool = False,
    full: bool = False,
    title: str | None = None,
    progress: bool = False,
    trigger: str = "manual",
    media: str = "keep",
) -> PushResult:
    """Push a stored version of ``source_project`` into a Label Studio project.

    Args:
        syncer: a :class:`ls_space_sync.pull.run.Syncer` (client, state database, store root, settings).
        source_project: the project whose dataset is read.
        target_project: the project to write; ``None`` creates one with the version's label config.
        version, as_of: which stored version (a number or tag; or the version current at a UTC
            time); default latest.
        ids: only these source task ids. where: a Lance SQL predicate on the columns
            (``is_labeled = true``, ``data.text LIKE '%x%'``).
        delete: delete target tasks whose source rows were deleted (are not in the version at all;
            rows outside ``ids``/``where`` are not deletes).
        full: compare every linked row with its target task on the server, not only rows whose
            stamp moved since the last push (repairs hand edits in the target).
        title: title of a created project.
        progress: show a progress bar on stderr.
        trigger: recorded with the run (``manual``, ``mirror``).
        media: ``keep`` (default): task data as stored. ``reupload``: a media URL the target server
            no longer serves (a GET not answering 2xx) whose bytes the version stored is uploaded
            again (each sha256 once) and the task pushed with the new ``/data/upload/...`` URL
            (:mod:`ls_space_sync.media.upload`, docs/media.md).

    Returns:
        The push's counts; ``status`` is ``succeeded`` or ``skipped`` (nothing moved).

    Raises:
        StoreError: no dataset, or no such version/tag. PushError: bad filter or options.
        LabelConfigMismatch: the target's label config lacks controls the rows use.
        LabelStudioError: the server refused a request (its message is passed on).
        ProjectLocked: another push to the target project is running.
    """
    if target_project == source_project:
        raise PushError(f"a push into its own project {source_project} would add every task again; "
                        f"use `ls-space-sync restore -p {source_project}` to bring it back to a version")
    if media not in ("keep", "reupload"):
        raise PushError(f"media={media!r}: use 'keep' or 'reupload'")
    store = syncer.store(source_project)
    ds = store.dataset(version, as_of=as_of)
    filters = [f"({where})"] if where else []
    if ids:
        filters.append(f"id IN ({', '.join(str(int(i)) for i in ids)})")
    job = _Push(syncer, store, ds, " AND ".join(filters) or None, delete=delete, full=full, progress=progress)
    new_project = target_project is None
    if target_project is None:
        config = store.label_config(ds.version)
        if not config:
            raise PushError(f"project {source_project} v{ds.version} has no stored label config; "
                            "create the target project yourself and pass --to-project")
        target_project = syncer.client.create_project(title or f"Copy of project {source_project} (v{ds.version})", config)
        job.target_config = config
        log.info("created project %s for the push of project %s v%s", target_project, source_project, ds.version)
    job.target = int(target_project)
    if media == "reupload":
        from ls_space_sync.media.upload import MediaReupload

        job.media = MediaReupload(syncer.client, store, ds, job.target)
    with writer_lock(syncer.settings, syncer.state, job.target, lock_root=local_dir(syncer.root) / ".push", scope=PUSH):
        scan = _recover(syncer.state, source_project, job.target)
        run = syncer.state.start_run(source_project, kind="push", trigger=trigger)
        with syncer.state.Session.begin() as s:
            s.add(PushRun(run_id=run.run_id, source_project=source_project, target_project=job.target,
                          source_version=ds.version, new_project=new_project))
        job.result = PushResult(source_project, job.target, ds.version, run.run_id, new_project=new_project)
        started = time.monotonic()
        tag = version if isinstance(version, str) and not version.isdigit() else None
        with syncer.client.counting() as requests:
            try:
                with run_context(run.run_id, source_project):
                    # Scan the target's task meta when a push may have died between import and links,
                    # and on --full (a repair), unless the target is new.
                    job.run(run.run_id, scan=not new_project and (scan or full))
            except BaseException as exc:
                if new_project:
                    log.error("the push into the new project %s stopped; push again with --to-project %s to finish "
                              "it", job.target, job.target)
                syncer.state.finish_run(run.run_id, FAILED, error=f"{type(exc).__name__}: {exc}"[:2000],
                                        requests=requests.n, version=ds.version, tag=tag, inserted=job.result.created,
                                        updated=job.result.updated, deleted=job.result.deleted)
                raise
        r = job.result
        if job.media is not None:
            r.media_uploaded, r.media_rewritten = job.media.uploaded, job.media.rewritten
        r.requests, r.seconds = requests.n, time.monotonic() - started
        r.status = SUCCEEDED if r.moved else SKIPPED
        syncer.state.finish_run(run.run_id, r.status, inserted=r.created, updated=r.updated, deleted=r.deleted,
                                version=ds.version, tag=tag, requests=r.requests)
        return r


def _recover(state: StateDB, source: int, target: int) -> bool:
    """Close pushes to ``target`` still marked running (we hold its lock: their process died).

    Returns whether the last push from ``source`` to ``target`` did not finish cleanly, i.e. whether
    the target may hold tasks imported right before the links were written.
    """
    with state.Session.begin() as s:
        q = (select(SyncRun).join(PushRun, PushRun.run_id == SyncRun.run_id)
             .where(PushRun.target_project == target).order_by(SyncRun.started_at.desc()))
        runs = list(s.scalars(q.limit(50)))
        for run in runs:
            if run.status == RUNNING:
                run.status, run.finished_at = FAILED, utcnow()
                run.error = "the process stopped during the push; the next push resumed it"
        last = next((r for r in runs if r.project_id == source), None)
        return last is not None and last.status == FAILED


class _Push:
    """The state of one push between its plan and its last request."""

    def __init__(self, syncer: Any, store: ProjectStore, ds: Any, filter_: str | None, *, delete: bool, full: bool,
                 progress: bool):
        self.client: LabelStudioClient = syncer.client
        self.state: StateDB = syncer.state
        self.chunk = syncer.settings.push.chunk_size
        self.page_size = syncer.settings.sync.page_size
        self.store, self.ds, self.filter = store, ds, filter_
        self.source = store.project_id
        self.delete, self.full, self.progress = delete, full, progress
        self.target = 0
        self.target_config: str | None = None
        self.users: set[int] | None = None
        self.media: Any = None  # a MediaReupload with media="reupload"
        self.links: dict[int, list[_Link]] = {}
        self.result: PushResult

    # --- reading ---------------------------------------------------------------------------

    def batches(self) -> Iterator[Any]:
        """Yield the selected rows of the version as Arrow record batches."""
        try:
            yield from self.ds.to_batches(filter=self.filter)
        except (ValueError, OSError) as exc:
            if self.filter is None:
                raise
            cols = ", ".join(self.ds.schema.names)
            raise PushError(f"the filter {self.filter!r} does not work on this dataset ({str(exc)[:300]}); "
                            f"write a SQL predicate over the columns {cols}") from None

    def present(self) -> set[tuple[int, int]]:
        """(id, created_at in microseconds) of every row of the version, filter or not."""
        out: set[tuple[int, int]] = set()
        for batch in self.ds.to_batches(columns=["id", "created_at"]):
            created = batch.column("created_at").cast(pa.int64()).to_pylist()
            out.update(zip(batch.column("id").to_pylist(), created))
        return out

    def load_links(self) -> None:
        with self.state.Session() as s:
            q = select(PushLink).where(or_(
                (PushLink.source_project == self.source) & (PushLink.target_project == self.target),
                (PushLink.source_project == self.target) & (PushLink.target_project == self.source)))
            for row in s.scalars(q):
                link = _Link.of(row, self.source)
                self.links.setdefault(link.here_id, []).append(link)

    def link_of(self, task_id: int, created: int | None) -> _Link | None:
        for link in self.links.get(task_id, []):
            if link.here_created in (None, created):
                link.here_created = created
                return link
        return None

    def owns(self, link: _Link, task: dict[str, Any]) -> bool:
        """Whether the target task ``task`` (with ``created_at``, ``meta``, ``project``) is the one
        ``link`` points at, not another task that got its id.

        The task's ``created_at`` must be the link's. A link without one (written before it was
        recorded) is trusted only if the task carries this source's origin mark for the link's
        row; on the source side of a mirror (no origin mark to check) it is not trusted.
        """
        if task.get("project") is not None and int(task["project"]) != self.target:
            return False  # a task id is global: a scattered GET can return another project's task
        if link.there_created is not None:
            return _micros(task.get("created_at")) == link.there_created
        if not link.forward:
            return False
        origin = (task.get("meta") or {}).get(ORIGIN_KEY) or {}
        return (origin.get("source_project") == self.source and origin.get("source_id") == link.here_id
                and (link.here_created is None or _micros(origin.get("source_created_at")) == link.here_created))

    def warn_reused(self, links: list[_Link], what: str) -> None:
        """Count and log links whose target id now holds another task."""
        self.result.reused += len(links)
        log.warning("%d tasks of project %s are no longer the tasks pushed there from project %s (Label Studio "
                    "reused their ids for other tasks: %s); left them alone and %s", len(links), self.target,
                    self.source, ", ".join(str(link.there_id) for link in links[:20]), what)

    def origin(self, task: dict[str, Any]) -> dict[str, Any]:
        return {"dataset": f"project-{self.source}", "version": self.ds.version, "source_project": self.source,
                "source_id": task["id"], "source_created_at": task.get("created_at")}

    # --- the run ---------------------------------------------------------------------------

    def run(self, run_id: str, scan: bool) -> None:
        self.run_id = run_id
        self.load_links()
        if scan or (not self.links and self.target_config is None):
            self.scan_origins()  # an existing target, never pushed to from here (or the state was lost)
        new, changed, names = self.plan()
        if new or changed:
            self.check_config(names)
            self.write(new, changed)
        if self.delete:
            self.delete_gone(self.present())
        self.save([link for links in self.links.values() for link in links if link.dirty])

    def scan_origins(self) -> None:
        """Link target tasks that carry this source's origin mark but have no link (a push that died)."""
        found = []
        for page in self.client.iter_task_pages(self.target, fields="task_only", include="id,created_at,meta",
                                                page_size=max(self.page_size, 1000)):
            for task in page:
                origin = (task.get("meta") or {}).get(ORIGIN_KEY) or {}
                if origin.get("source_project") != self.source or not isinstance(origin.get("source_id"), int):
                    continue
                created = _micros(origin.get("source_created_at"))
                if self.link_of(origin["source_id"], created) is not None:
                    continue
                link = _Link(None, True, origin["source_id"], created, None, task["id"],
                             _micros(task.get("created_at")), None, None, dirty=True)
                self.links.setdefault(link.here_id, []).append(link)
                found.append(link)
        if found:
            log.warning("project %s already holds %d tasks from an interrupted push of project %s; linked them "
                        "instead of importing them again", self.target, len(found), self.source)
            self.save(found)
        self.result.resumed = len(found)

    def plan(self) -> tuple[set[int], set[int], set[str]]:
        """Classify the selected rows: new, changed (content differs from the last push), unchanged.

        Reads the stamp columns of every row; a row's full content only when its stamp moved.
        Returns ``(new ids, changed ids, from_names their results use)``.
        """
        new: set[int] = set()
        changed: set[int] = set()
        names: set[str] = set()
        for batch in self.batches():
            full_rows = metas = None
            fresh: list[int] = []  # positions of new rows in the batch
            ids = batch.column("id").to_pylist()
            for i, (task_id, stamp) in enumerate(zip(ids, batch_stamps(batch))):
                stamp_json = json.dumps(list(stamp))
                link = self.link_of(task_id, stamp[0])
                if link is not None and not self.full and link.here_stamp == stamp_json:
                    self.result.unchanged += 1
                    continue
                if link is None:
                    metas = metas or batch.column("meta").to_pylist()
                    origin = (json.loads(metas[i]) if metas[i] else {}).get(ORIGIN_KEY) or {}
                    if origin.get("source_project") != self.target or not isinstance(origin.get("source_id"), int):
                        new.add(task_id)
                        fresh.append(i)
                        continue
                    # It came from the target (a mirror's other direction): link it back, never re-import.
                    link = _Link(None, False, task_id, stamp[0], None, origin["source_id"],
                                 _micros(origin.get("source_created_at")), None, None, dirty=True)
                    self.links.setdefault(task_id, []).append(link)
                full_rows = full_rows or batch.to_pylist()
                task = row_to_task(full_rows[i])
                if not self.full and link.content_hash == content_hash(task):
                    link.here_stamp, link.dirty = stamp_json, True  # an echo of the last push, or a no-op edit
                    self.result.echoes += 1
                    continue
                require_results(task)
                changed.add(task["id"])
                names |= result_names(task)
            if fresh:
                names |= batch_result_names(batch, fresh)
        return new, changed, names

    def check_config(self, names: set[str]) -> None:
        if self.target_config is None:
            self.target_config = self.client.project(self.target).label_config
        check_label_config(self.target_config, names, self.target)

    def write(self, new: set[int], changed: set[int]) -> None:
        """Import new rows and update changed ones, ``push.chunk_size`` tasks per request batch."""
        from tqdm import tqdm

        if self.users is None:
            self.users = self.client.user_ids()
        bar = tqdm(total=len(new) + len(changed), unit="task", disable=not self.progress,
                   desc=f"push -> project {self.target}")
        to_import: list[tuple[dict[str, Any], Any]] = []
        to_update: list[tuple[dict[str, Any], Any, _Link]] = []
        try:
            for batch in self.batches():
                ids = batch.column("id").to_pylist()
                if not any(i in new or i in changed for i in ids):
                    continue
                for task_id, row in zip(ids, batch.to_pylist()):
                    if task_id not in new and task_id not in changed:
                        continue
                    stamp = stamp_of(row)
                    task = row_to_task(row)
                    if task_id in new:
                        to_import.append((task, stamp))
                    else:
                        link = self.link_of(task_id, stamp[0])
                        assert link is not None  # plan() linked every changed row
                        to_update.append((task, stamp, link))
                    if len(to_import) >= self.chunk:
                        bar.update(self.import_chunk(self.with_media(to_import)))
                        to_import = []
                    if len(to_update) >= self.chunk:
                        bar.update(self.update_chunk(self.with_media(to_update)))
                        to_update = []
            if to_update:
                bar.update(self.update_chunk(self.with_media(to_update)))
            if to_import:
                bar.update(self.import_chunk(self.with_media(to_import)))
        finally:
            bar.close()

    def with_media(self, items: list[Any]) -> list[Any]:
        """With ``media="reupload"``, point the tasks' gone media at re-uploaded copies (in place)."""
        if self.media is not None:
            self.media.rewrite([item[0] for item in items])
        return items

    def import_chunk(self, items: list[tuple[dict[str, Any], Any]], replacing: list[_Link] | None = None) -> int:
        """Import tasks in one request and write their links at once (before anything else); then
        read the new tasks' ``created_at`` back into the links (their identity, see :meth:`owns`).

        The hash recorded is that of the import body: an import stores the flags it is given.
        """
        payload = [import_payload(t, self.origin(t), self.users) for t, _ in items]
        self.result.authors_dropped += sum(
            1 for (t, _), p in zip(items, payload) for a, b in zip(t.get("annotations") or [], p["annotations"])
            if annotation_author(a) is not None and "completed_by" not in b)
        try:
            ids = self.client.import_tasks(self.target, payload)
        except ServerUnavailable as exc:
            raise ServerUnavailable(f"{exc}; run the push again: it finds tasks imported before the failure by "
                                    "their origin meta and does not import them twice") from None
        links: Sequence[_Link | None] = replacing or [None] * len(items)
        out = []
        for (task, stamp), target_id, old, body in zip(items, ids, links, payload):
            link = old or _Link(None, True, task["id"], stamp[0], None, 0, None, None, None)
            link.there_id, link.there_created, link.there_stamp = target_id, None, None
            link.here_stamp, link.content_hash, link.dirty = json.dumps(list(stamp)), content_hash(body), True
            if old is None:
                self.links.setdefault(task["id"], []).append(link)
            out.append(link)
        self.save(out)
        self.result.created += len(items)
        # page_size one more than asked for: a full page would make the pager ask for the next one
        created = {t["id"]: _micros(t.get("created_at")) for page in self.client.iter_task_pages(
            self.target, ids=ids, fields="task_only", include="id,created_at", page_size=len(ids) + 1) for t in page}
        for link in out:
            # absent (deleted right away): stays None, so only the origin mark can vouch for it
            link.there_created, link.dirty = created.get(link.there_id), True
        self.save(out)
        return len(items)

    def update_chunk(self, items: list[tuple[dict[str, Any], Any, _Link]]) -> int:
        """Make linked target tasks hold their rows' content, in place; re-import those gone.

        A target task that is not the link's any more (:meth:`owns`: its id was reused) is never
        written: the row is imported again, counted in ``reused``. Each link records the hash of
        what its target task holds after the writes: the content :func:`plan_task_ops` says the
        server keeps, or, where an op sent ``ground_truth: true`` (the server then clears the flag
        on the task's other annotations), the task as read back.
        """
        current = fetch_tasks(self.client, self.target, [link.there_id for _, _, link in items], self.page_size)
        gone: list[tuple[dict[str, Any], Any, _Link]] = []
        reused: list[tuple[dict[str, Any], Any, _Link]] = []
        reread: dict[int, _Link] = {}
        written: list[_Link] = []
        for task, stamp, link in items:
            cur = current.get(link.there_id)
            if cur is None or not self.owns(link, cur):
                (gone if cur is None else reused).append((task, stamp, link))
                continue
            desired = import_payload(task, self.origin(task), self.users)
            want = content_hash(desired)
            have = content_hash(cur)
            if link.content_hash is not None and have not in (link.content_hash, want):
                self.result.conflicts += 1
                log.warning("task %s of project %s changed on both sides since the last push; the source wins "
                            "(the target's edit is in its own dataset if it was pulled)", cur["id"], self.target)
            ops, held = plan_task_ops(desired, cur)
            try:
                apply_ops(self.client, cur["id"], ops)
            except BaseException:
                self.forget_agreement(written, link, reread)
                raise
            written.append(link)
            if ops:
                self.result.updated += 1
            else:
                self.result.unchanged += 1
            if sets_ground_truth(ops):
                reread[cur["id"]] = link
            link.here_stamp, link.content_hash, link.dirty = json.dumps(list(stamp)), content_hash(held), True
            link.there_created, link.there_stamp = _micros(cur.get("created_at")), None
        for task_id, task in fetch_tasks(self.client, self.target, list(reread), self.page_size).items():
            if task_id in reread:
                reread[task_id].content_hash = content_hash(task)
        redo = {id(link) for _, _, link in gone + reused}
        self.save([link for _, _, link in items if id(link) not in redo])
        if reused:
            self.warn_reused([link for _, _, link in reused], "imported the source tasks again")
        if gone:
            log.info("%d linked tasks are gone from project %s; importing them again", len(gone), self.target)
        if gone or reused:
            self.import_chunk([(t, s) for t, s, _ in gone + reused], replacing=[link for _, _, link in gone + reused])
        return len(items)

    def forget_agreement(self, written: list[_Link], failed: _Link, reread: dict[int, _Link]) -> None:
        """Save the links of a chunk whose writes stopped at ``failed`` (a request failed, perhaps
        after the server applied it), before the error goes on.

        What the failed task's target holds is unknown now, and so is that of a task whose
        ``ground_truth`` write is not read back yet: their links forget the content both sides
        agreed on (``content_hash`` and stamp ``None``), so the next push compares those rows with
        the server instead of taking a row that went back to the old content for an echo of the
        last push. The tasks written before keep what they reached.
        """
        unknown = [failed, *reread.values()]
        for link in unknown:
            link.here_stamp, link.content_hash, link.dirty = None, None, True
        self.save(list({id(link): link for link in [*written, *unknown]}.values()))

    def delete_gone(self, present: set[tuple[int, int]]) -> None:
        """Delete target tasks whose linked source rows are gone from the version (hard deletes).

        A row that merely falls outside ``--ids``/``--where`` is not a delete. Only target tasks
        that are still the link's (:meth:`owns`) are deleted; one whose id now holds another task
        is left alone and counted in ``reused``. The links of gone rows are dropped either way.
        """
        present_ids = {i for i, _ in present}
        gone = [link for links in self.links.values() for link in links if link.row_id is not None and (
            (link.here_id, link.here_created) not in present if link.here_created is not None
            else link.here_id not in present_ids)]
        for start in range(0, len(gone), self.chunk):
            part = gone[start:start + self.chunk]
            ids = [link.there_id for link in part]
            there = {t["id"]: t for page in self.client.iter_task_pages(
                self.target, ids=ids, fields="task_only", include="id,created_at,meta,project", page_size=len(ids) + 1)
                for t in page}
            found = [link for link in part if link.there_id in there]
            doomed = [link.there_id for link in found if self.owns(link, there[link.there_id])]
            if len(doomed) < len(found):
                self.warn_reused([link for link in found if link.there_id not in doomed],
                                 "did not delete them (their source rows are gone)")
            self.client.delete_tasks(self.target, doomed)
            self.result.deleted += len(doomed)
            with self.state.Session.begin() as s:
                s.execute(delete(PushLink).where(PushLink.id.in_([link.row_id for link in part])))
            for link in part:
                self.links[link.here_id].remove(link)

    def save(self, links: list[_Link]) -> None:
        """Write links (insert or update) in one transaction."""
        if not links:
            return
        now = utcnow()
        with self.state.Session.begin() as s:
            for link in links:
                cols = link.columns(self.source, self.target) | {"version": self.ds.version, "run_id": self.run_id,
                                                                 "pushed_at": now}
                if link.row_id is None:
                    row = PushLink(**cols)
                    s.add(row)
                    s.flush()
                    link.row_id = row.id
                else:
                    stored = s.get(PushLink, link.row_id)
                    for key, value in cols.items():
                        setattr(stored, key, value)
                link.dirty = False


def _micros(value: Any) -> int | None:
    """``created_at`` (ISO string) as microseconds since the epoch; ``None`` if absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        return stamp_of({"created_at": value, "updated_at": value})[0]
    except ValueError:
        return None
