"""What changed in a project's dataset between two versions: tasks, then their annotations.

A *ref* names a version: a tag (``run-000002``), a version number (``7`` or ``v7``), ``@<UTC time>``
(the version current then, e.g. ``@2026-11-21T23:00:00Z``) or ``latest``.

Two passes, so a diff costs little more than reading a few columns:

1. **Stamps.** DuckDB joins the two versions on ``id`` reading only the stamp columns (``id,
   created_at, updated_at``, the counters) and ``run_id``; Lance serves just those columns. A task
   whose ``created_at`` differs under the same id is a reused id (SQLite Label Studio reuses the
   newest id after a delete): a delete of the old task and an insert of the new one, as in
   :mod:`ls_space_sync.changes`. A task is *updated* when its stamp or the run that wrote it differs.
2. **Details**, for updated tasks only: their rows are taken from both versions (a Lance filter on
   ``id``) and annotations and predictions are compared by (``id``, ``created_at``): added, changed
   (any field differs, ``updated_at`` first) or removed.

Lance's own change tracking (``_row_last_updated_at_version``, ``LanceDataset.delta``) needs stable
row ids, which the store's datasets do not enable, so it is not used (pylance 14 answers an empty
delta without them).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Iterator, Sequence

import duckdb
import lance

from ls_space_sync.model.records import STAMP_COLUMNS, format_ts
from ls_space_sync.model.refs import Ref, parse_ref
from ls_space_sync.store.dataset import ProjectStore, version_time

# Rows read per Lance filter in the details pass (``id IN (...)``).
_DETAIL_CHUNK = 2000
# Columns compared in the details pass; ``data`` stands for ``data_json``.
_SKIP_FIELDS = {"id", "annotations", "predictions", "run_id", "data"}


def open_ref(store: ProjectStore, ref: Ref | str | int | None) -> lance.LanceDataset:
    """Open ``store``'s dataset at a ref (see :func:`ls_space_sync.model.refs.parse_ref`).

    Raises:
        StoreError: no dataset, or no such tag/version, or nothing committed by that time.
    """
    return store.dataset(**parse_ref(ref).dataset_args())


@dataclass
class ItemChanges:
    """Annotation (or prediction) changes of one task: lists of ``{"id", "updated_at"}``.

    ``changed`` items carry ``updated_at`` of the newer version and ``before`` (the older one's).
    """

    added: list[dict[str, Any]] = field(default_factory=list)
    changed: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def short(self) -> str:
        """``+2 ~1 -0``."""
        return f"+{len(self.added)} ~{len(self.changed)} -{len(self.removed)}"


@dataclass
class TaskUpdate:
    """One updated task: the task columns that differ (``data`` = task data) and item changes."""

    id: int
    fields: list[str]
    annotations: ItemChanges
    predictions: ItemChanges


@dataclass
class VersionRef:
    """One side of a diff: the ref as given, the version it resolved to, its time (UTC) and tags."""

    ref: str
    version: int
    timestamp: datetime | None
    tags: list[str]


@dataclass
class VersionDiff:
    """Tasks inserted, updated and deleted from version ``old`` to ``new`` of a project's dataset.

    ``inserted``/``deleted`` are task ids (a reused id is in both); ``updated`` has one
    :class:`TaskUpdate` per task, or only ids (empty ``fields``/changes) with ``details=False``.
    ``seconds`` is the wall time of the diff; ``details`` whether item changes were compared.
    """

    project_id: int
    old: VersionRef
    new: VersionRef
    inserted: list[int]
    updated: list[TaskUpdate]
    deleted: list[int]
    seconds: float = 0.0
    details: bool = True

    @property
    def counts(self) -> dict[str, int]:
        """``{"inserted", "updated", "deleted"}`` task counts."""
        return {"inserted": len(self.inserted), "updated": len(self.updated), "deleted": len(self.deleted)}

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (timestamps as ISO 8601 UTC strings)."""
        out = asdict(self)
        for side in ("old", "new"):
            ts = out[side]["timestamp"]
            out[side]["timestamp"] = format_ts(ts) if ts else None
        out["counts"] = self.counts
        return out

    def lines(self, limit: int = 20) -> Iterator[str]:
        """A report for people, at most ``limit`` ids or tasks per list."""

        def side(v: VersionRef) -> str:
            when = f", {v.timestamp:%Y-%m-%d %H:%M:%S}Z" if v.timestamp else ""
            tags = f" [{', '.join(v.tags)}]" if v.tags else ""
            return f"{v.ref} (v{v.version}{when}){tags}"

        def ids(values: Sequence[int]) -> str:
            shown = ", ".join(str(i) for i in values[:limit])
            return shown + (f", ... ({len(values) - limit} more)" if len(values) > limit else "")

        yield f"project {self.project_id}: {side(self.old)} -> {side(self.new)} ({self.seconds:.2f} s)"
        c = self.counts
        yield f"  tasks: +{c['inserted']} inserted  ~{c['updated']} updated  -{c['deleted']} deleted"
        if self.inserted:
            yield f"  inserted: {ids(self.inserted)}"
        if self.deleted:
            yield f"  deleted: {ids(self.deleted)}"
        if self.updated and not self.details:
            yield f"  updated: {ids([u.id for u in self.updated])}"
            return
        for u in self.updated[:limit]:
            parts = [f"task {u.id}:"]
            if u.fields:
                parts.append(f"fields {', '.join(u.fields)};")
            if u.annotations:
                parts.append(f"annotations {u.annotations.short()} {_item_ids(u.annotations)};")
            if u.predictions:
                parts.append(f"predictions {u.predictions.short()} {_item_ids(u.predictions)};")
            yield "  updated " + " ".join(parts).rstrip(";")
        if len(self.updated) > limit:
            yield f"  ... {len(self.updated) - limit} more updated tasks (--json lists all)"


def _item_ids(ch: ItemChanges) -> str:
    parts = []
    for sign, items in (("+", ch.added), ("~", ch.changed), ("-", ch.removed)):
        if items:
            parts.append(sign + ",".join(str(i["id"]) for i in items))
    return "(" + " ".join(parts) + ")"


def _version_ref(ds: lance.LanceDataset, ref: Ref | str | int | None) -> VersionRef:
    tags = sorted(name for name, t in ds.tags.list().items() if t["version"] == ds.version)
    when = None
    for v in ds.versions():
        if v["version"] == ds.version:
            when = version_time(v["timestamp"])
    return VersionRef(ref=str(ref if ref is not None else "latest"), version=ds.version, timestamp=when, tags=tags)


_STAMP_SQL = """
SELECT coalesce(a.id, b.id) AS id,
       CASE WHEN a.id IS NULL THEN 'inserted'
            WHEN b.id IS NULL THEN 'deleted'
            WHEN a.created_at IS DISTINCT FROM b.created_at THEN 'replaced'
            ELSE 'updated' END AS kind
FROM old_version AS a FULL OUTER JOIN new_version AS b ON a.id = b.id
WHERE a.id IS NULL OR b.id IS NULL OR {distinct}
ORDER BY 1
"""


def stamp_changes(old: lance.LanceDataset, new: lance.LanceDataset) -> tuple[list[int], list[int], list[int]]:
    """Compare two versions by stamps; return ``(inserted, updated, deleted)`` task ids, each sorted.

    Reads only ``id``, the stamp columns and ``run_id`` of each version. A reused id is in
    ``inserted`` and ``deleted``.
    """
    compared = [c for c in STAMP_COLUMNS if c != "id"] + ["run_id"]
    distinct = " OR ".join(f"a.{c} IS DISTINCT FROM b.{c}" for c in compared)
    con = duckdb.connect()
    try:
        con.register("old_version", old)
        con.register("new_version", new)
        rows = con.execute(_STAMP_SQL.format(distinct=distinct)).fetchall()
    finally:
        con.close()
    inserted = [i for i, kind in rows if kind in ("inserted", "replaced")]
    deleted = [i for i, kind in rows if kind in ("deleted", "replaced")]
    updated = [i for i, kind in rows if kind == "updated"]
    return inserted, updated, deleted


def _rows_by_id(ds: lance.LanceDataset, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for start in range(0, len(ids), _DETAIL_CHUNK):
        chunk = ids[start:start + _DETAIL_CHUNK]
        table = ds.to_table(filter=f"id IN ({', '.join(str(int(i)) for i in chunk)})")
        out.update((r["id"], r) for r in table.to_pylist())
    return out


def item_changes(old: list[dict[str, Any]] | None, new: list[dict[str, Any]] | None) -> ItemChanges:
    """Compare two lists of stored annotations (or predictions) of one task by (``id``, ``created_at``)."""

    def key(item: dict[str, Any]) -> tuple[Any, Any]:
        return item.get("id"), item.get("created_at")

    def brief(item: dict[str, Any]) -> dict[str, Any]:
        ts = item.get("updated_at")
        return {"id": item.get("id"), "updated_at": format_ts(ts) if ts else None}

    before = {key(i): i for i in old or []}
    after = {key(i): i for i in new or []}
    out = ItemChanges()
    for k, item in after.items():
        if k not in before:
            out.added.append(brief(item))
        elif item != before[k]:
            out.changed.append({**brief(item), "before": brief(before[k])["updated_at"]})
    out.removed = [brief(i) for k, i in before.items() if k not in after]
    return out


def _changed_keys(old: str | None, new: str | None) -> list[str]:
    a, b = json.loads(old or "{}"), json.loads(new or "{}")
    return sorted(k for k in set(a) | set(b) if k != "__absent__" and a.get(k) != b.get(k))


def row_update(a: dict[str, Any], b: dict[str, Any]) -> TaskUpdate:
    """Describe what changed from stored row ``a`` to stored row ``b`` of one task (``Table.to_pylist()`` dicts)."""
    fields = []
    for c in b:
        if c in _SKIP_FIELDS or c not in a or a[c] == b[c]:
            continue
        if c == "extra":  # name the task keys that differ, not the JSON column that holds them
            fields += _changed_keys(a[c], b[c])
        else:
            fields.append("data" if c == "data_json" else c)
    return TaskUpdate(
        id=b["id"],
        fields=fields,
        annotations=item_changes(a.get("annotations"), b.get("annotations")),
        predictions=item_changes(a.get("predictions"), b.get("predictions")),
    )


def task_updates(old: lance.LanceDataset, new: lance.LanceDataset, ids: Sequence[int]) -> list[TaskUpdate]:
    """Load the rows of ``ids`` from both versions and describe what changed in each task."""
    before, after = _rows_by_id(old, ids), _rows_by_id(new, ids)
    return [row_update(before[task_id], after[task_id]) for task_id in ids]


def diff_versions(
    store: ProjectStore, old: Ref | str | int | None, new: Ref | str | int | None = None, *, details: bool = True
) -> VersionDiff:
    """Diff two versions of a project's dataset (``new`` default latest).

    Refs as in :func:`ls_space_sync.model.refs.parse_ref`.

    Args:
        store: the project's store.
        old, new: refs of the versions to compare (a :class:`Ref`, a tag, a version number, or
            ``@<ISO time>``, UTC); ``old`` may be newer than ``new`` (the diff then reads backwards:
            what was inserted is what the later version no longer has).
        details: also compare annotations and predictions of updated tasks.

    Raises:
        StoreError: a ref names no version of this project.
    """
    started = time.perf_counter()
    ds_old, ds_new = open_ref(store, old), open_ref(store, new)
    if ds_old.version == ds_new.version:
        inserted: list[int] = []
        updated_ids: list[int] = []
        deleted: list[int] = []
    else:
        inserted, updated_ids, deleted = stamp_changes(ds_old, ds_new)
    if details and updated_ids:
        updated = task_updates(ds_old, ds_new, updated_ids)
    else:
        updated = [TaskUpdate(i, [], ItemChanges(), ItemChanges()) for i in updated_ids]
    return VersionDiff(
        project_id=store.project_id,
        old=_version_ref(ds_old, old),
        new=_version_ref(ds_new, new),
        inserted=inserted,
        updated=updated,
        deleted=deleted,
        seconds=time.perf_counter() - started,
        details=details,
    )

