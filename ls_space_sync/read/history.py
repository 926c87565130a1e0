"""The history of one task, one annotation or the label config, read from the versions already stored.

A sync run writes a task's row only when the task changed, stamped with its ``run_id``; the
version that run committed carries the same ``run_id`` in its properties. So the *row versions* of
a task (the distinct rows ever stored for its id, keyed by ``created_at`` and ``run_id``) say which
versions changed it, and nothing has to be captured beyond what the sync already stores.

Finding them without reading every version (a filtered read costs ~10-30 ms a version):

1. **Index** (:class:`VersionIndex`): one read of every version's transaction gives each
   version's ``run_id``, tag, label config, and whether it removed fragments (a merge of small
   fragments, a compaction, or a fragment whose rows were all deleted).
2. **Walk** newest first. At a version ``c`` Lance is asked for the task's rows *including the
   deleted ones* still in ``c``'s fragments (``include_deleted_rows``), reading only fragments not
   read at a newer version (a fragment's rows never change; only its deletion file does). No
   fragment was removed after ``r`` (the last version at or before ``c`` that removed any), so
   every row written in ``[r, c]`` is among them, and so is the row current at ``r``: the found
   row written last at or before ``r``, at ``w``. The history from ``w`` to ``c`` is complete; the
   walk goes on at the version before ``w``. Each step covers at least one merge window (about
   ``max_small_fragments`` runs), and a task that changed a few times takes a few steps.
3. **Rows**: a step reads stamps first; when small fragments hold a row not read yet, it reads
   them whole (a few hundred rows); a row found only in a large fragment (the first sync's, a
   merge's) is read at a version where it is current, with a filter on ``id`` (Lance reads the
   other columns of that one row only).
4. **Deletes**: a task no longer current after its last row version was deleted at the first
   version where it is absent; that is searched by bisection over the versions in between (a
   task, once deleted, never comes back: a reused id is another task).

Each row version is compared with the one before it (:func:`ls_space_sync.read.diff.row_update`):
task fields, annotations and predictions added, changed or removed, with their authors.

A reused id (SQLite Label Studio gives a new task the id of a deleted newest one) shows as the old
task's delete and the new task's insert, the insert marked ``reused_id``. The walk follows the id
back through every task that held it while rows of that task are still stored; versions removed
by compaction are not in the history (their rows may be, then without a version: ``version`` is
``None`` and ``seen_at`` names the oldest stored version that holds the row).
"""

from __future__ import annotations

import bisect
import difflib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator

import lance
import pyarrow as pa

from ls_space_sync.model.records import format_ts
from ls_space_sync.read.diff import ItemChanges, row_update
from ls_space_sync.store.dataset import PROP_PREFIX, ProjectStore, StoreError, version_time

# Fragments up to this many rows are read whole when they hold a row version of the task; larger
# ones (the first sync's, merged ones) only by stamp, and the row itself later through a filter.
_SMALL_FRAGMENT_ROWS = 1_000
_TRACE_COLUMNS = ["id", "created_at", "updated_at", "run_id"]
# Task fields a person reads as "what changed"; the rest follow from them (timestamps, counters).
_DERIVED_FIELDS = {"updated_at", "updated_by", "is_labeled", "total_annotations", "cancelled_annotations",
                   "total_predictions"}


class UnknownTask(StoreError):
    """A task (or annotation) id that no stored version of the project holds."""


# --- the version index ---------------------------------------------------------------------------

@dataclass
class VersionInfo:
    """What one stored version's commit says: its ``run_id`` and tag (``None`` for a merge or a
    compaction), and whether it removed fragments."""

    version: int
    run_id: str | None
    tag: str | None
    label_config: str | None
    counts: dict[str, int] | None
    removes: bool


def _removes_fragments(tx: Any) -> bool:
    op = tx.operation
    name = type(op).__name__
    if name in ("Append", "Project", "UpdateConfig", "CreateIndex", "DataReplacement"):
        return False
    if name == "Update":
        return bool(op.removed_fragment_ids)
    if name == "Delete":
        return bool(op.deleted_fragment_ids)
    return True  # Overwrite, Rewrite, Restore and what this code does not know: assume the worst


# How many transactions a lazy index reads, walking down from a version, before it reads them all.
_LAZY_READS = 64
# A run_id starts with the run's start time (store.state: ``20261201T091856Z-p3-1a2b3c4d``).
_RUN_ID_TIME = re.compile(r"(\d{8}T\d{6})Z-")


class VersionIndex:
    """The stored versions of a project's dataset: each one's run, tag, label config and commit time.

    Lazy: a task's history reads the transactions (~0.6 ms each) and manifests (~0.5 ms each) of
    the versions it needs only, near the ones it walks, and finds the version a run committed by
    bisecting commit times to the start time in its ``run_id``. Reading all of them
    (:meth:`load_all`, ``LanceDataset.get_transactions``: 0.3-0.7 s at 1,000 versions) is the
    fallback, and what :func:`config_history` does.
    """

    def __init__(self, store: ProjectStore):
        self.ds = store.dataset()
        self.latest = self.ds.version
        self.info: dict[int, VersionInfo | None] = {}  # None: not stored (cleaned up)
        self.loaded = False
        self._times: dict[int, datetime] = {}
        self._run_version: dict[str, int | None] = {}
        self._removals: list[int] = []
        self._tags: dict[int, list[str]] | None = None

    # -- what one version's transaction says

    def _read(self, version: int) -> VersionInfo | None:
        if version not in self.info:
            if self.loaded or version < 1 or version > self.latest:
                return None
            try:
                tx = self.ds.read_transaction(version)
            except (ValueError, OSError):  # its manifest was removed by compaction
                tx = None
            self.info[version] = None if tx is None else self._info(version, tx)
        return self.info[version]

    def _info(self, version: int, tx: Any) -> VersionInfo:
        props = {k[len(PROP_PREFIX):]: v for k, v in (tx.transaction_properties or {}).items() if k.startswith(PROP_PREFIX)}
        counts = json.loads(props["counts"]) if "counts" in props else None
        info = VersionInfo(version, props.get("run_id"), props.get("tag"), props.get("label_config"), counts,
                           version == 1 or _removes_fragments(tx))
        if info.run_id:
            self._run_version[info.run_id] = version
        return info

    def load_all(self) -> None:
        """Read every stored version's transaction (one call while no version is missing)."""
        if self.loaded:
            return
        txs = self.ds.get_transactions(self.latest)  # newest first; stops at a version cleaned up
        for i, tx in enumerate(txs):
            self.info[self.latest - i] = None if tx is None else self._info(self.latest - i, tx)
        if len(txs) < self.latest:  # versions older than a gap: only those still stored
            stored = {v["version"] for v in self.ds.versions()}
            for v in range(1, self.latest - len(txs) + 1):
                tx = self.ds.read_transaction(v) if v in stored else None
                self.info[v] = None if tx is None else self._info(v, tx)
        self.loaded = True
        versions = self.versions
        # A version whose predecessor is not stored counts as removing fragments: what it dropped is unknown.
        self._removals = [v for v in versions if self.info[v].removes  # type: ignore[union-attr]
                          or (v > versions[0] and self.info.get(v - 1) is None)]

    @property
    def versions(self) -> list[int]:
        """Every stored version, oldest first (reads them all)."""
        self.load_all()
        return sorted(v for v, i in self.info.items() if i is not None)

    def get(self, version: int) -> VersionInfo:
        """The :class:`VersionInfo` of a stored version."""
        info = self._read(version)
        if info is None:
            raise StoreError(f"project {self.ds.uri}: version {version} is not stored")
        return info

    # -- navigation

    def at(self, version: int) -> lance.LanceDataset:
        """The dataset at ``version`` (shares the open dataset's caches)."""
        return self.ds.checkout_version(version)

    def before(self, version: int) -> int | None:
        """The newest stored version older than ``version``, or ``None``."""
        if self.loaded:
            versions = self.versions
            i = bisect.bisect_left(versions, version)
            return versions[i - 1] if i > 0 else None
        v = version - 1
        while v >= 1 and self._read(v) is None:
            v -= 1
            if version - v > _LAZY_READS:
                self.load_all()
                return self.before(version)
        return v if v >= 1 else None

    def last_removal(self, version: int) -> int | None:
        """The newest version at or before ``version`` that removed fragments (or follows one no
        longer stored), or ``None``."""
        if not self.loaded:
            for v in range(version, max(0, version - _LAZY_READS), -1):
                info = self._read(v)
                if info is None:
                    return v + 1 if v + 1 <= version else None
                if info.removes:
                    return v
            if version <= _LAZY_READS:
                return None
            self.load_all()
        i = bisect.bisect_right(self._removals, version)
        return self._removals[i - 1] if i > 0 else None

    def removals_until(self, version: int) -> list[int]:
        """The versions up to ``version`` that removed fragments, oldest first (reads them all)."""
        self.load_all()
        return self._removals[:bisect.bisect_right(self._removals, version)]

    def version_of(self, run_id: str | None) -> int | None:
        """The version run ``run_id`` committed, or ``None`` (no such stored version)."""
        if not run_id:
            return None
        if run_id not in self._run_version and not self.loaded:
            m = _RUN_ID_TIME.match(run_id)
            if m:
                self._find_run(run_id, datetime.strptime(m.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc))
            if run_id not in self._run_version:
                self.load_all()
        return self._run_version.get(run_id)

    def _find_run(self, run_id: str, started: datetime) -> None:
        # Commits are serial (one writer per project), so commit times grow with the version: the
        # run's version is among the first committed after it started.
        lo, hi = 1, self.latest + 1
        while lo < hi:
            mid = (lo + hi) // 2
            when = self._time_or_none(mid)
            if when is not None and when < started:
                lo = mid + 1
            else:
                hi = mid
        for v in range(max(1, lo - 1), min(self.latest, lo + _LAZY_READS) + 1):
            self._read(v)
            if run_id in self._run_version:
                return

    # -- time and tag

    def _time_or_none(self, version: int) -> datetime | None:
        try:
            return self.time(version)
        except (ValueError, OSError):
            return None

    def time(self, version: int) -> datetime:
        """The commit time (UTC) of a stored version."""
        if version not in self._times:
            self._times[version] = version_time(self.at(version).get_version()["timestamp"])
        return self._times[version]

    def times(self, versions: list[int]) -> None:
        """Load the commit times of many versions at once (one listing beats a manifest read each)."""
        if len([v for v in versions if v not in self._times]) > _LAZY_READS:
            self._times.update((v["version"], version_time(v["timestamp"])) for v in self.ds.versions())

    def tag(self, version: int) -> str | None:
        """The version's tag: the one it has (its run's if still there), else the one its run gave it."""
        if self._tags is None:
            self._tags = _tags_by_version(self.ds)
        names = self._tags.get(version)
        run_tag = self.get(version).tag
        return run_tag if names and run_tag in names else names[0] if names else run_tag


def _tags_by_version(ds: lance.LanceDataset) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for name, t in ds.tags.list().items():
        out.setdefault(t["version"], []).append(name)
    return {v: sorted(names) for v, names in out.items()}


# --- results -------------------------------------------------------------------------------------

@dataclass
class ItemChange:
    """One annotation (or prediction) added, changed or removed by a version.

    ``by`` is the user id of the annotation's author (``completed_by``; for a change, the
    ``updated_by`` Label Studio recorded, when it did), or for a prediction its ``model_version``.
    ``updated_at`` is the item's own (UTC, ISO 8601); ``created_at`` with ``id`` is its identity.
    """

    kind: str  # "added" | "changed" | "removed"
    id: int | None
    by: int | str | None
    created_at: str | None
    updated_at: str | None


@dataclass
class HistoryEntry:
    """A version that changed the task: when, which run, and what.

    ``kind``: ``inserted`` (``reused_id`` when another task held the id before), ``updated``,
    ``rewritten`` (stored again, nothing differs: a full scan re-read it), ``deleted``.
    ``fields`` are the task fields that differ (``data`` = task data; see
    :class:`ls_space_sync.read.diff.TaskUpdate`); ``updated_by`` the user ids the task's own
    ``updated_by`` names then. ``version`` is ``None`` when the row's own
    version was removed by compaction; ``seen_at`` is then the oldest stored version holding it.
    """

    version: int | None
    tag: str | None
    run_id: str | None
    time: datetime | None
    kind: str
    task_created_at: str
    fields: list[str] = field(default_factory=list)
    annotations: list[ItemChange] = field(default_factory=list)
    predictions: list[ItemChange] = field(default_factory=list)
    reused_id: bool = False
    seen_at: int | None = None
    updated_by: list[int] = field(default_factory=list)

    def summary(self) -> str:
        """What changed, in one line: ``annotations +41 (by 1); data``."""
        if self.kind == "deleted":
            held = ",".join(str(a.id) for a in self.annotations)
            return "task deleted" + (f" (with annotations {held})" if held else "")
        parts = []
        shown = [f for f in self.fields if f not in _DERIVED_FIELDS]
        for label, items in (("annotation", self.annotations), ("prediction", self.predictions)):
            for sign, kind in (("+", "added"), ("~", "changed"), ("-", "removed")):
                these = [i for i in items if i.kind == kind]
                if these:
                    who = sorted({str(i.by) for i in these if i.by is not None})
                    by = f" by {', '.join(who)}" if who else ""
                    parts.append(f"{label}s {sign}{','.join(str(i.id) for i in these)}{by}")
        if shown:
            by = f" by {', '.join(map(str, self.updated_by))}" if self.updated_by and "data" in shown else ""
            parts.append(", ".join(shown) + by)
        head = {"inserted": "inserted", "rewritten": "rewritten, no change"}.get(self.kind, "")
        if self.reused_id:
            head = "inserted (id reused: another task held it before)"
        return "; ".join([p for p in [head, *parts] if p])


@dataclass
class TaskHistory:
    """Every stored version that changed one task id, oldest first.

    ``annotation_id`` is set for the history of one annotation (then only its entries are kept).
    ``versions`` is how many versions the project has stored, ``steps`` how many the walk read.
    """

    project_id: int
    task_id: int
    entries: list[HistoryEntry]
    versions: int
    steps: int
    seconds: float
    annotation_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (times as ISO 8601 UTC strings)."""
        out = asdict(self)
        for entry in out["entries"]:
            entry["time"] = format_ts(entry["time"]) if entry["time"] else None
        return out

    def lines(self) -> Iterator[str]:
        """The history for people, one version a line."""
        what = f"annotation {self.annotation_id} of task {self.task_id}" if self.annotation_id else f"task {self.task_id}"
        yield (f"project {self.project_id}, {what}: {len(self.entries)} of {self.versions} versions changed it "
               f"({self.seconds:.2f} s)")
        created = None
        for e in self.entries:
            if e.task_created_at != created and (created is not None or e.reused_id):
                yield f"  -- task created {e.task_created_at} (another task with the same id) --"
            created = e.task_created_at
            version = f"v{e.version}" if e.version is not None else f"(v{e.seen_at}?)"
            when = f"{e.time:%Y-%m-%d %H:%M:%S}Z" if e.time else "-"
            yield f"  {version:<7} {e.tag or '-':<11} {when:<20}  {e.summary()}"


@dataclass
class ConfigChange:
    """A version whose label config differs from the version before it (the first one too).

    ``diff`` is a unified diff (``difflib``) from the previous config (empty for the first).
    """

    version: int
    tag: str | None
    run_id: str | None
    time: datetime
    label_config: str
    diff: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the time as ISO 8601 UTC)."""
        out = asdict(self)
        out["time"] = format_ts(self.time)
        return out


# --- the walk ------------------------------------------------------------------------------------

@dataclass
class _RowVersion:
    key: tuple[Any, Any, Any]
    written: int | None
    row: dict[str, Any] | None = None
    seen_at: int = 0
    live_at: int | None = None  # a version where it is current (to read it through a filter)


def _scan(ds: lance.LanceDataset, task_id: int, fragments: list[Any], columns: list[str] | None) -> pa.Table:
    # Deleted rows are only returned by a plain scan: no scalar index, no late materialization.
    return ds.scanner(columns=columns, filter=f"id = {int(task_id)}", fragments=fragments, include_deleted_rows=True,
                      late_materialization=False, use_scalar_index=False, with_row_id=True).to_table()


def _key(row: dict[str, Any]) -> tuple[Any, Any, Any]:
    return row["created_at"], row["run_id"], row["updated_at"]


def _walk(index: VersionIndex, task_id: int) -> tuple[dict[tuple[Any, Any, Any], _RowVersion], bool, int]:
    """Find every stored row version of ``task_id``; return them, whether the id is current, and the steps."""
    found: dict[tuple[Any, Any, Any], _RowVersion] = {}
    read: set[int] = set()
    current = False
    steps = 0

    def record(table: pa.Table, version: int) -> None:
        nonlocal current
        whole = "annotations" in table.column_names
        for row in table.to_pylist():
            live = row.pop("_rowid") is not None
            rv = found.get(_key(row))
            if rv is None:
                rv = found[_key(row)] = _RowVersion(_key(row), index.version_of(row["run_id"]))
            if version:
                rv.seen_at = version
            if whole and rv.row is None:
                rv.row = row
            if live and version != 0:
                rv.live_at = version
                current = current or version == index.latest

    cursor: int | None = index.latest
    while cursor is not None:
        steps += 1
        ds = index.at(cursor)
        fresh = [f for f in ds.get_fragments() if f.fragment_id not in read]
        read.update(f.fragment_id for f in fresh)
        small = [f for f in fresh if f.physical_rows <= _SMALL_FRAGMENT_ROWS]
        large = [f for f in fresh if f.physical_rows > _SMALL_FRAGMENT_ROWS]
        if small:
            # Stamps first (~7 ms for 20 small fragments), whole rows (~26 ms) only if a row is new.
            trace = _scan(ds, task_id, small, _TRACE_COLUMNS)
            record(trace, cursor)
            if any(found[_key(r)].row is None for r in trace.select(_TRACE_COLUMNS).to_pylist()):
                record(_scan(ds, task_id, small, None), cursor)
        if large:
            record(_scan(ds, task_id, large, _TRACE_COLUMNS), cursor)
        removal = index.last_removal(cursor)
        if removal is None:
            break
        before_removal = [rv.written for rv in found.values() if rv.written is not None and rv.written <= removal]
        if before_removal:
            # At the version that wrote it, the row current at ``removal`` is in a small fragment of its own.
            written = max(before_removal)
            cursor = written if written < cursor else index.before(written)
            continue
        # No row of this id was current at ``removal``: another task may have held the id before a
        # gap. Every fragment of an older version is in ``cursor`` or in the version before one that
        # removed it, so one scan of those (stamps only) finds every older row; then the walk is done.
        older: dict[int, Any] = {}
        for r in index.removals_until(removal):
            previous = index.before(r)
            if previous is not None:
                for f in index.at(previous).get_fragments():
                    if f.fragment_id not in read:
                        older.setdefault(f.fragment_id, f)
        if older:
            steps += 1
            record(_scan(index.ds, task_id, list(older.values()), _TRACE_COLUMNS), 0)
        break
    return found, current, steps


def _load_rows(index: VersionIndex, task_id: int, found: dict[tuple[Any, Any, Any], _RowVersion]) -> None:
    """Read the rows known only by their stamps, each at a version where it is current."""
    for rv in found.values():
        if rv.row is not None:
            continue
        at = rv.live_at if rv.live_at is not None else rv.written
        if at is None:
            continue
        for row in index.at(at).to_table(filter=f"id = {int(task_id)}").to_pylist():
            if _key(row) == rv.key:
                rv.row = row
        if rv.row is None and rv.seen_at:  # not current there after all: read its fragments whole
            ds = index.at(rv.seen_at)
            for row in _scan(ds, task_id, ds.get_fragments(), None).to_pylist():
                row.pop("_rowid")
                if _key(row) == rv.key:
                    rv.row = row


def _present(index: VersionIndex, version: int, task_id: int, created_at: Any) -> bool:
    try:
        ds = index.at(version)
    except (ValueError, OSError):  # not stored: bisect past it
        return True
    table = ds.to_table(columns=["created_at"], filter=f"id = {int(task_id)}")
    return created_at in table.column("created_at").to_pylist()


def _deleted_at(index: VersionIndex, task_id: int, created_at: Any, last: int, upper: int) -> int | None:
    """The first version in ``(last, upper]`` without the task (presence is monotone there), else ``None``."""
    candidates = list(range(last + 1, upper + 1))
    lo, hi = 0, len(candidates)
    while lo < hi:
        mid = (lo + hi) // 2
        if _present(index, candidates[mid], task_id, created_at):
            lo = mid + 1
        else:
            hi = mid
    return candidates[lo] if lo < len(candidates) else None


def _author(item: dict[str, Any] | None, changed: bool) -> int | None:
    if item is None:
        return None
    if changed and item.get("extra"):
        who = json.loads(item["extra"]).get("updated_by")
        if isinstance(who, int):
            return who
    who = item.get("completed_by")
    return who if isinstance(who, int) else None


def _items(changes: ItemChanges, old: list[dict[str, Any]] | None, new: list[dict[str, Any]] | None,
           prediction: bool) -> list[ItemChange]:
    def find(items: list[dict[str, Any]] | None, item_id: Any, updated_at: Any) -> dict[str, Any] | None:
        for i in items or []:
            stamp = format_ts(i["updated_at"]) if i.get("updated_at") else None
            if i.get("id") == item_id and (updated_at is None or stamp == updated_at):
                return i
        return None

    out = []
    for kind, brief, source in (("added", changes.added, new), ("changed", changes.changed, new),
                                ("removed", changes.removed, old)):
        for b in brief:
            item = find(source, b["id"], b["updated_at"])
            by: int | str | None = (item or {}).get("model_version") if prediction else _author(item, kind == "changed")
            created = item.get("created_at") if item else None
            out.append(ItemChange(kind, b["id"], by, format_ts(created) if created else None, b["updated_at"]))
    return out


def task_history(store: ProjectStore, task_id: int, *, annotation_id: int | None = None,
                 index: VersionIndex | None = None) -> TaskHistory:
    """List every stored version that changed task ``task_id`` (or one of its annotations), oldest first.

    Args:
        store: the project's store.
        task_id: the Label Studio task id; every task that held this id is followed (a reused id
            shows as a delete and an insert marked ``reused_id``).
        annotation_id: keep only the versions that added, changed or removed this annotation
            (and the task's delete while the annotation existed).
        index: a :class:`VersionIndex` already read (several histories of one project).

    Raises:
        StoreError: the project has no dataset. UnknownTask: no stored version holds the task
            (or the task never held the annotation).
    """
    started = time.perf_counter()
    index = index or VersionIndex(store)
    found, current, steps = _walk(index, int(task_id))
    if not found:
        raise UnknownTask(f"project {store.project_id} has no task {task_id} in any stored version; "
                          "list task ids with `ls-space-sync sql \"SELECT id FROM project_<id>\"`")
    _load_rows(index, int(task_id), found)

    def order(rv: _RowVersion) -> tuple[int, Any]:
        return (rv.written if rv.written is not None else rv.seen_at), rv.key[2]

    rows = sorted((rv for rv in found.values() if rv.row is not None), key=order)
    index.times([rv.written for rv in rows if rv.written is not None])
    entries: list[HistoryEntry | None] = []
    prev: dict[str, Any] | None = None
    last: _RowVersion | None = None
    for rv in rows:
        row = rv.row
        assert row is not None
        if last is not None and prev is not None and prev["created_at"] != row["created_at"]:
            entries.append(_deletion(index, int(task_id), last, upper=rv.written or rv.seen_at))
            prev = None
        entry = _entry(index, rv, row)
        if prev is None:
            entry.kind, entry.reused_id = "inserted", bool(entries)
            for name in ("annotations", "predictions"):
                setattr(entry, name, _items(ItemChanges(added=_briefs(row.get(name))), None, row.get(name),
                                            name == "predictions"))
        else:
            update = row_update(prev, row)
            entry.kind = "updated" if update.fields or update.annotations or update.predictions else "rewritten"
            entry.fields = update.fields
            entry.annotations = _items(update.annotations, prev.get("annotations"), row.get("annotations"), False)
            entry.predictions = _items(update.predictions, prev.get("predictions"), row.get("predictions"), True)
        entries.append(entry)
        prev, last = row, rv
    if last is not None and not current:
        entries.append(_deletion(index, int(task_id), last, upper=index.latest))
    kept = [e for e in entries if e is not None]
    if annotation_id is not None:
        kept = _annotation_entries(kept, int(annotation_id))
        if not kept:
            raise UnknownTask(f"task {task_id} of project {store.project_id} never held annotation {annotation_id} "
                              "in a stored version")
    return TaskHistory(project_id=store.project_id, task_id=int(task_id), entries=kept,
                       versions=index.latest, steps=steps, seconds=time.perf_counter() - started,
                       annotation_id=annotation_id)


def _entry(index: VersionIndex, rv: _RowVersion, row: dict[str, Any]) -> HistoryEntry:
    v = rv.written
    return HistoryEntry(version=v, tag=index.tag(v) if v else None, run_id=row.get("run_id"),
                        time=index.time(v) if v else None, kind="updated", task_created_at=format_ts(row["created_at"]),
                        seen_at=None if v else rv.seen_at, updated_by=_task_editors(row))


def _task_editors(row: dict[str, Any]) -> list[int]:
    """The users a task's ``updated_by`` names: an id, or (Label Studio 1.23) ``[{"user_id": 1}]``, kept in extra."""
    by = row.get("updated_by")
    if by is None and row.get("extra"):
        by = json.loads(row["extra"]).get("updated_by")
    if isinstance(by, int):
        return [by]
    if isinstance(by, list):
        return [u["user_id"] if isinstance(u, dict) else u for u in by
                if isinstance(u, int) or (isinstance(u, dict) and isinstance(u.get("user_id"), int))]
    return []
def _briefs(items: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    return [{"id": i.get("id"), "updated_at": format_ts(i["updated_at"]) if i.get("updated_at") else None}
            for i in items or []]


def _deletion(index: VersionIndex, task_id: int, rv: _RowVersion, *, upper: int) -> HistoryEntry | None:
    assert rv.row is not None
    last = rv.written if rv.written is not None else rv.seen_at
    v = _deleted_at(index, task_id, rv.row["created_at"], last, upper)
    if v is None:
        return None
    info = index.get(v)
    return HistoryEntry(version=v, tag=index.tag(v), run_id=info.run_id, time=index.time(v), kind="deleted",
                        task_created_at=format_ts(rv.row["created_at"]),
                        annotations=[ItemChange("removed", a.get("id"), _author(a, False),
                                                format_ts(a["created_at"]) if a.get("created_at") else None,
                                                format_ts(a["updated_at"]) if a.get("updated_at") else None)
                                     for a in rv.row.get("annotations") or []])


def _annotation_entries(entries: list[HistoryEntry], annotation_id: int) -> list[HistoryEntry]:
    """The entries that touch one annotation, each with only that annotation's change; ``kind`` is
    the annotation's (``added``, ``changed``, ``removed``), or ``deleted`` with its task."""
    out = []
    for e in entries:
        mine = [a for a in e.annotations if a.id == annotation_id]
        if mine:
            kind = "deleted" if e.kind == "deleted" else mine[0].kind
            out.append(HistoryEntry(version=e.version, tag=e.tag, run_id=e.run_id, time=e.time, kind=kind,
                                    task_created_at=e.task_created_at, annotations=mine, seen_at=e.seen_at,
                                    updated_by=e.updated_by))
    return out


def find_annotation_task(store: ProjectStore, annotation_id: int) -> int:
    """The id of the task that holds annotation ``annotation_id`` in the latest version.

    Raises:
        UnknownTask: no task of the latest version holds it (name the task with ``--task`` then).
    """
    ds = store.dataset()
    for batch in ds.to_batches(columns=["id", "annotations"]):
        ids = batch.column("id").to_pylist()
        for task, anns in zip(ids, batch.column("annotations").to_pylist()):
            if any(a.get("id") == annotation_id for a in anns or []):
                return int(task)
    raise UnknownTask(f"no task of project {store.project_id} holds annotation {annotation_id} in the latest version; "
                      "give its task with --task ID")


# --- label config --------------------------------------------------------------------------------

def config_history(store: ProjectStore, *, index: VersionIndex | None = None) -> list[ConfigChange]:
    """List the versions whose label config differs from the version before, oldest first.

    Versions without a label config (merges, compactions) are skipped; the first stored config is
    a change from nothing.

    Raises:
        StoreError: the project has no dataset.
    """
    index = index or VersionIndex(store)
    out: list[ConfigChange] = []
    previous = ""
    for v in index.versions:
        info = index.get(v)
        config = info.label_config
        if not config or config == previous:
            continue
        diff = "".join(difflib.unified_diff(
            previous.splitlines(keepends=True), config.splitlines(keepends=True),
            fromfile=f"v{out[-1].version}" if out else "(none)", tofile=f"v{v}"))
        out.append(ConfigChange(version=v, tag=index.tag(v), run_id=info.run_id, time=index.time(v),
                                label_config=config, diff=diff))
        previous = config
    return out
