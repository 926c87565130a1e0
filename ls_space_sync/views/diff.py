"""What changed in a view between two of its versions, by primary key: rows inserted, updated, deleted.

DuckDB joins the two versions on the view's primary key (stored with every view version as the
``primary_key`` property) and compares every other column; a view is small next to its source
and has no stamps, so all columns are read.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator

from ls_space_sync.model.refs import Ref, parse_ref
from ls_space_sync.views.store import ViewStore
from ls_space_sync.views.transforms import connect_duckdb


@dataclass
class ViewDiff:
    """Rows of view ``view`` inserted, updated and deleted from version ``old`` to ``new``.

    Each list holds primary keys as dicts (``{"task_id": 3, "annotation_id": 9, ...}``), sorted.
    ``old_tags``/``new_tags`` are the tags of each side; ``seconds`` the diff's wall time.
    """

    view: str
    key: list[str]
    old: int
    new: int
    old_tags: list[str]
    new_tags: list[str]
    inserted: list[dict[str, Any]]
    updated: list[dict[str, Any]]
    deleted: list[dict[str, Any]]
    seconds: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        """``{"inserted", "updated", "deleted"}`` row counts."""
        return {"inserted": len(self.inserted), "updated": len(self.updated), "deleted": len(self.deleted)}

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict, with ``counts``."""
        return {**asdict(self), "counts": self.counts}

    def lines(self, limit: int = 20) -> Iterator[str]:
        """A report for people, at most ``limit`` keys per list."""
        def side(v: int, tags: list[str]) -> str:
            return f"v{v}" + (f" [{', '.join(tags)}]" if tags else "")

        c = self.counts
        yield f"view {self.view}: {side(self.old, self.old_tags)} -> {side(self.new, self.new_tags)} ({self.seconds:.2f} s)"
        yield f"  rows: +{c['inserted']} inserted  ~{c['updated']} updated  -{c['deleted']} deleted"
        for name, keys in (("inserted", self.inserted), ("updated", self.updated), ("deleted", self.deleted)):
            if keys:
                shown = ", ".join(json.dumps(k, default=str) for k in keys[:limit])
                more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
                yield f"  {name}: {shown}{more}"


def diff_view(store: ViewStore, old: Ref | str | int | None, new: Ref | str | int | None = None) -> ViewDiff:
    """Diff two versions of a view (refs as :func:`ls_space_sync.model.refs.parse_ref`; ``new`` default latest).

    Raises:
        StoreError: the view has no such version or tag.
    """
    started = time.perf_counter()
    a = store.dataset(**parse_ref(old).dataset_args())
    b = store.dataset(**parse_ref(new).dataset_args())
    key = json.loads(store.properties(b.version).get("primary_key") or '["task_id"]')
    others = [c for c in b.schema.names if c not in key and c in a.schema.names]
    on = " AND ".join(f'a."{k}" = b."{k}"' for k in key)
    distinct = " OR ".join(f'a."{c}" IS DISTINCT FROM b."{c}"' for c in others) or "false"
    keys = ", ".join(f'coalesce(a."{k}", b."{k}") AS "{k}"' for k in key)
    query = f"""
        SELECT {keys},
               CASE WHEN a."{key[0]}" IS NULL THEN 'inserted' WHEN b."{key[0]}" IS NULL THEN 'deleted'
                    ELSE 'updated' END AS kind
        FROM old_view AS a FULL OUTER JOIN new_view AS b ON {on}
        WHERE a."{key[0]}" IS NULL OR b."{key[0]}" IS NULL OR {distinct}
        ORDER BY {", ".join(str(i + 1) for i in range(len(key)))}"""
    con = connect_duckdb()
    try:
        con.register("old_view", a)
        con.register("new_view", b)
        rows = con.sql(query).to_arrow_table().to_pylist()
    finally:
        con.close()
    by_kind: dict[str, list[dict[str, Any]]] = {"inserted": [], "updated": [], "deleted": []}
    for row in rows:
        by_kind[row.pop("kind")].append(row)
    tags = store.tags()
    return ViewDiff(store.name, key, a.version, b.version, sorted(t for t, v in tags.items() if v == a.version),
                    sorted(t for t, v in tags.items() if v == b.version), by_kind["inserted"], by_kind["updated"],
                    by_kind["deleted"], time.perf_counter() - started)
