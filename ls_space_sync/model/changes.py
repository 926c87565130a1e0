"""Stored stamps vs. Label Studio stamps -> change set. Pure: no I/O.

A *stamp* is what says whether a stored task is still the task on the server:
``(created_at, updated_at, total_annotations, cancelled_annotations, total_predictions)``.

- ``updated_at`` moves on annotation and prediction edits and task data edits (Label Studio 1.23).
- The counters catch what does not move ``updated_at``: bulk ``import_predictions`` and the Data
  Manager's "delete predictions" (verified on 1.23.2, see label-studio-facts.md).
- ``created_at`` tells a reused id apart: on SQLite, Label Studio gives a new task ``max(id)+1``,
  so after the newest task is deleted its id comes back for a different task. Same id, other
  ``created_at`` = a *replace* (hard delete of the old task + insert of the new), never an update.

Deletes are only ever inferred from a full scan of ids (:func:`full_scan_plan`), never from an
incremental page, where a missing task only means "not changed".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Mapping

from ls_space_sync.model.records import parse_ts

# (created_at, updated_at) as microseconds since the epoch, then the three counters.
Stamp = tuple[int, int, int, int, int]
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _micros(value: Any) -> int:
    if isinstance(value, str):
        value = parse_ts(value)
    if isinstance(value, datetime):
        return (value - _EPOCH) // timedelta(microseconds=1)
    raise ValueError(f"not a timestamp: {value!r}")


def stamp_of(task: Mapping[str, Any]) -> Stamp:
    """Return the stamp of a task JSON object or stored row (timestamps as ISO strings or datetimes).

    Raises:
        ValueError: ``created_at`` or ``updated_at`` is missing or not a timestamp.
    """
    return (
        _micros(task.get("created_at")),
        _micros(task.get("updated_at")),
        int(task.get("total_annotations") or 0),
        int(task.get("cancelled_annotations") or 0),
        int(task.get("total_predictions") or 0),
    )


@dataclass
class ChangeSet:
    """Task ids of one run, by kind. ``replaces`` are reused ids: counted as a delete and an insert."""

    inserts: list[int] = field(default_factory=list)
    updates: list[int] = field(default_factory=list)
    replaces: list[int] = field(default_factory=list)
    deletes: list[int] = field(default_factory=list)

    @property
    def upserts(self) -> list[int]:
        """Ids whose new rows must be written (inserts, updates and replaces)."""
        return self.inserts + self.updates + self.replaces

    @property
    def counts(self) -> dict[str, int]:
        """``{"inserted", "updated", "deleted"}`` as the run reports them."""
        return {
            "inserted": len(self.inserts) + len(self.replaces),
            "updated": len(self.updates),
            "deleted": len(self.deletes) + len(self.replaces),
        }

    def __bool__(self) -> bool:
        return bool(self.inserts or self.updates or self.replaces or self.deletes)

    def extend(self, other: "ChangeSet") -> None:
        """Add another change set's ids to this one (pages of the same run)."""
        self.inserts += other.inserts
        self.updates += other.updates
        self.replaces += other.replaces
        self.deletes += other.deletes


def classify(stored: Mapping[int, Stamp], seen: Mapping[int, Stamp]) -> ChangeSet:
    """Compare the stamps of tasks seen on the server with the stored ones.

    Args:
        stored: stamps of every stored task, by id.
        seen: stamps of some tasks read from the server (a page), by id.

    Returns:
        The inserts, updates and replaces among ``seen``; unchanged tasks are left out.
        ``deletes`` is always empty: absence from a page proves nothing.
    """
    cs = ChangeSet()
    for task_id, stamp in seen.items():
        old = stored.get(task_id)
        if old is None:
            cs.inserts.append(task_id)
        elif old[0] != stamp[0]:
            cs.replaces.append(task_id)
        elif old != stamp:
            cs.updates.append(task_id)
    return cs


def full_scan_plan(
    stored: Mapping[int, Stamp], scanned: Mapping[int, Stamp], done: Iterable[int] = ()
) -> tuple[list[int], list[int]]:
    """Plan the work a full scan of the server's stamps reveals.

    Args:
        stored: stamps of every stored task, by id.
        scanned: stamps of *every* task on the server, by id (a complete scan, not a page).
        done: ids already fetched in this run (their rows are staged; not fetched again).

    Returns:
        ``(to_fetch, deletes)``: ids whose stamp differs from the stored one or that are new, sorted;
        and stored ids that the server no longer has (hard deletes), sorted.
    """
    done = set(done)
    to_fetch = sorted(i for i, s in scanned.items() if i not in done and stored.get(i) != s)
    deletes = sorted(i for i in stored if i not in scanned)
    return to_fetch, deletes
