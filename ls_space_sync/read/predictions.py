"""A stored tag shown inside Label Studio: each task's annotations at that tag as predictions.

The ML-backend endpoint ``/ml/<secret>/tag/<tag>/predict`` answers with :func:`tag_predictions`.
A project connected to that URL (Settings > Model) then shows, on each task, its annotations as
they were at the tag, each as one prediction whose ``model_version`` is the tag.

Which dataset holds the tag (:func:`resolve_tag`):

1. the connected project's own dataset, if it has the tag (task ids are the project's own);
2. else the one project linked to it by push links (a push or mirror source, or the other side
   of a both-ways pair) whose dataset has the tag; ids map through the links, each side checked
   by ``(id, created_at)`` so a task id Label Studio reused for another task gets nothing;
3. ``source`` names that project explicitly (``/ml/<secret>/source/<id>/tag/<tag>``) when the
   own dataset or several linked ones have the tag.

Which annotations become predictions: every annotation of the task at the tag that was not
cancelled (a skip has no result to show), one prediction each (Label Studio takes a list per
task), the ground truth first, then by annotation id. ``score`` is ``None``: these are people's
labels, not a model's confidence. A task the tag does not hold gets an empty list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

import pyarrow as pa
from sqlalchemy import or_, select

from ls_space_sync.errors import Terminal
from ls_space_sync.store.dataset import ProjectStore, Root, stored_projects
from ls_space_sync.store.state import PushLink, StateDB

# Task ids per dataset filter (Lance's ``id IN (...)``); Label Studio sends batches of tasks.
_CHUNK = 1000


class TagNotFound(Terminal):
    """No dataset the connected project can be shown from holds the tag."""


class AmbiguousTag(Terminal):
    """Several datasets could serve the tag: the URL must name the source project."""


@dataclass(frozen=True)
class TagSource:
    """Where a connected project's predictions at a tag come from.

    Attributes:
        project_id: the connected project (whose tasks Label Studio sends).
        source_id: the project whose dataset holds the tag (``project_id`` itself, or a linked one).
        tag: the tag, also the predictions' ``model_version``.
        version: the dataset version the tag names.
    """

    project_id: int
    source_id: int
    tag: str
    version: int

    @property
    def linked(self) -> bool:
        """Whether task ids map through push links (the tag is another project's)."""
        return self.source_id != self.project_id


def linked_projects(state: StateDB, project_id: int) -> list[int]:
    """The projects push links connect to ``project_id``, in either direction (sorted)."""
    with state.Session() as s:
        targets = s.scalars(select(PushLink.target_project).where(PushLink.source_project == project_id).distinct())
        sources = s.scalars(select(PushLink.source_project).where(PushLink.target_project == project_id).distinct())
        return sorted({*targets, *sources} - {project_id})


def resolve_tag(root: Root, state: StateDB, project_id: int, tag: str, source: int | None = None) -> TagSource:
    """Find the dataset that serves ``tag`` to the connected project (see the module's rules).

    Args:
        root: the store root (``Settings.resolved_store_root``).
        state: the state database (push links).
        project_id: the connected Label Studio project.
        tag: a tag of the serving dataset, e.g. ``run-000003``.
        source: the serving project, if the URL names it.

    Raises:
        TagNotFound: no candidate dataset has the tag, or ``source`` is not linked to the project.
        AmbiguousTag: several linked datasets have it and none is the project's own.
    """
    if source is not None:
        if source != project_id and source not in linked_projects(state, project_id):
            raise TagNotFound(f"project {source} has no push links to project {project_id}: its task ids "
                              "cannot be mapped; push or mirror it there first")
        candidates = [source]
    else:
        own = ProjectStore(root, project_id)
        if own.exists() and tag in own.tags():
            return TagSource(project_id, project_id, tag, own.tags()[tag])
        stored = set(stored_projects(root))
        candidates = [p for p in linked_projects(state, project_id)
                      if p in stored and tag in ProjectStore(root, p).tags()]
        if len(candidates) > 1:
            raise AmbiguousTag(f"tag {tag} is in the datasets of projects {', '.join(map(str, candidates))}, all "
                               f"linked to project {project_id}: name one in the URL, /ml/<secret>/source/"
                               f"{candidates[0]}/tag/{tag}")
    for pid in candidates:
        store = ProjectStore(root, pid)
        tags = store.tags()
        if tag in tags:
            return TagSource(project_id, pid, tag, tags[tag])
    where = f"project {candidates[0]}" if source is not None else f"project {project_id} or a project linked to it"
    raise TagNotFound(f"no tag {tag} in the dataset of {where}; list the tags with `ls-space-sync tags`")


def created_micros(value: Any) -> int | None:
    """``created_at`` as Label Studio sends it (ISO 8601, ``Z`` or offset) in microseconds since the epoch."""
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, str) and value:
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    delta = when - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _links(state: StateDB, project_id: int, source_id: int,
           ids: Sequence[int]) -> dict[int, list[tuple[int | None, int, int | None]]]:
    """``{connected task id: [(its created_at, source task id, source created_at)]}`` from push links."""
    out: dict[int, list[tuple[int | None, int, int | None]]] = {}
    with state.Session() as s:
        for start in range(0, len(ids), _CHUNK):
            part = list(ids[start:start + _CHUNK])
            q = select(PushLink).where(or_(
                (PushLink.source_project == source_id) & (PushLink.target_project == project_id)
                & PushLink.target_id.in_(part),
                (PushLink.source_project == project_id) & (PushLink.target_project == source_id)
                & PushLink.source_id.in_(part)))
            for row in s.scalars(q):
                if row.target_project == project_id:
                    out.setdefault(row.target_id, []).append((row.target_created, row.source_id, row.source_created))
                else:
                    out.setdefault(row.source_id, []).append((row.source_created, row.target_id, row.target_created))
    return out


def _same(a: int | None, b: int | None) -> bool:
    """Whether two ``created_at`` stamps name the same task (unknown on either side: trust the id)."""
    return a is None or b is None or a == b


def _rows(store: ProjectStore, version: int, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """``{task id: {"created": micros, "annotations": [...]}}`` of the version, for these ids."""
    wanted = sorted(set(ids))
    out: dict[int, dict[str, Any]] = {}
    if not wanted:
        return out
    ds = store.dataset(version)
    for start in range(0, len(wanted), _CHUNK):
        part = wanted[start:start + _CHUNK]
        table = ds.to_table(columns=["id", "created_at", "annotations"],
                            filter=f"id IN ({', '.join(str(int(i)) for i in part)})")
        created = table.column("created_at").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_pylist()
        for task_id, micros, anns in zip(table.column("id").to_pylist(), created,
                                                table.column("annotations").to_pylist()):
            out[task_id] = {"created": micros, "annotations": anns or []}
    return out


def as_predictions(annotations: Sequence[dict[str, Any]], model_version: str) -> list[dict[str, Any]]:
    """Stored annotations as Label Studio predictions: cancelled ones left out, ground truth first,
    then by annotation id; ``result`` as stored, ``score`` ``None``, ``model_version`` as given."""
    kept = [a for a in annotations if not a.get("was_cancelled")]
    kept.sort(key=lambda a: (not a.get("ground_truth"), a.get("id") or 0))
    out = []
    for a in kept:
        result = a.get("result")
        out.append({"result": json.loads(result) if isinstance(result, str) else (result or []),
                    "score": None, "model_version": model_version})
    return out


def tag_predictions(root: Root, state: StateDB, source: TagSource,
                    tasks: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Each task's annotations at the tag as predictions, in the order of ``tasks``.

    Args:
        root: the store root.
        state: the state database (push links, when ``source.linked``).
        source: from :func:`resolve_tag`.
        tasks: the tasks Label Studio sent (``id`` and ``created_at`` are read).

    Returns:
        One list per task (Label Studio's batch answer takes a list of predictions per task):
        ``[{"result": [...], "score": None, "model_version": tag}, ...]``, empty where the tag
        holds no matching task or no annotation that was not cancelled.
    """
    wanted: list[tuple[int | None, int | None]] = []
    for task in tasks:
        tid = task.get("id") if isinstance(task, dict) else None
        ok = isinstance(tid, int) and not isinstance(tid, bool)
        wanted.append((tid if ok else None, created_micros(task.get("created_at")) if ok else None))
    ids = [tid for tid, _ in wanted if tid is not None]
    # connected task (id, created) -> candidate source (id, created)
    if source.linked:
        links = _links(state, source.project_id, source.source_id, ids)
        mapped = {tid: [(sid, screated) for here, sid, screated in links.get(tid, []) if _same(here, created)]
                  for tid, created in wanted if tid is not None}
    else:
        mapped = {tid: [(tid, created)] for tid, created in wanted if tid is not None}
    rows = _rows(ProjectStore(root, source.source_id), source.version,
                 (sid for pairs in mapped.values() for sid, _ in pairs))
    out: list[list[dict[str, Any]]] = []
    for tid, _ in wanted:
        row = None
        for sid, screated in mapped.get(tid, []) if tid is not None else []:
            stored = rows.get(sid)
            if stored is not None and _same(screated, stored["created"]):
                row = stored
                break
        out.append(as_predictions(row["annotations"], source.tag) if row else [])
    return out
