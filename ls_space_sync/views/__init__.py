"""Materialized views: derived tables of a project (one row per region, per annotation, a label per
task...) stored as Lance datasets beside their source, versioned and tagged with it, and refreshed
incrementally after every sync run.

* :mod:`.builtins`: the built-in views ``regions``, ``annotations``, ``task_labels`` (DuckDB SQL).
* :mod:`.transforms`: a view's transform (SQL or a Python ``module:function``) and its fingerprint.
* :mod:`.store`: :class:`ViewStore`, the view's dataset (a ``ProjectStore`` at the view's URI).
* :mod:`.refresh`: :func:`refresh_view` (which source versions to step through, the change set of
  each step, the record in ``sync_runs``) and the hook :func:`refresh_project_views` a sync run calls.
* :mod:`.write`: one view version: an incremental step or a full rebuild, checked before its commit.
* :mod:`.diff`: rows inserted, updated and deleted between two view versions, by primary key.
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
