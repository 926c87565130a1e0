"""Materialized views: derived tables of a project (one row per region, per annotation, a label per
task...) stored as Lance datasets beside their source, versioned and tagged with it, and refreshed
incrementally after every sync run.

* :mod:`.builtins`: the built-in views ``regions``, ``annotations``, ``task_labels`` (DuckDB SQL).
* :mod:`.transforms`: a view's transform (SQL or a Python ``module:function``) and its fingerprint.
* :mod:`.store`: :class:`ViewStore`, the view's dataset (a ``ProjectStore`` at the view's URI).
* :mod:`.refresh`: :func:`refresh_view` (incremental by task id, or a full rebuild) and the hook
  :func:`refresh_project_views` that a sync run calls.
* :mod:`.ray_executor`: the ``executor: ray`` path (Ray Data).

See docs/views.md.
"""

from __future__ import annotations

from ls_space_sync.views.refresh import (
    StoreWorkspace,
    ViewRefresh,
    changed_tasks,
    find_view,
    refresh_project_views,
    refresh_view,
    view_store,
    views_of,
)
from ls_space_sync.views.store import ViewLocked, ViewStore

__all__ = ["StoreWorkspace", "ViewLocked", "ViewRefresh", "ViewStore", "changed_tasks", "find_view", "refresh_project_views",
           "refresh_view", "view_store", "views_of"]
