"""The Python API: read, query, diff, export and compact stored versions without the CLI.

    import ls_space_sync as lss

    ds = lss.open_dataset(3, tag="run-000002")          # a lance.LanceDataset, pinned to that version
    ds.to_table(columns=["id", "updated_at"], filter="is_labeled")
    lss.sql("SELECT count(*) FROM project_3")            # a pyarrow.Table
    lss.version_diff(3, "run-000001", "run-000002").counts  # {"inserted": 2, "updated": 5, "deleted": 1}
    lss.task_history(3, 42).entries                      # every version that changed task 42
    lss.to_hf_dataset(3, regions=True)                   # datasets.Dataset, one row per region
    lss.torch_iterable(3, tag="run-000002")              # torch IterableDataset of task JSON

Every function finds the store through the settings (``settings``, else ``load_settings()``: the
config file and environment as for the CLI), or through ``data_dir`` if given. A version is chosen
with at most one of ``tag`` (``"run-000002"``), ``version`` (an int) or ``as_of`` (a UTC time, a
``datetime`` or ISO 8601 string; the version current then); none means the latest.

The stored row of a task (one per task, primary key ``id``; see :mod:`ls_space_sync.records`):

==========================  ====================================================================
``id, project, inner_id``   int64; Label Studio's task id, project id, and number within it
``created_at, updated_at``  timestamp[us, UTC]; ``updated_at`` moves on annotation, prediction
                            and data edits
``updated_by``              int64 user id
``data``                    struct of strings, one field per ``$key`` of the label config
                            (``data.text``, ``data.image``); non-strings as JSON
``data_json``               the task's ``data`` as JSON (lossless)
``meta``, ``extra``         JSON strings: task meta, and every other task key
``is_labeled``              bool
``total_annotations``, ...  int64 counters (``cancelled_annotations``, ``total_predictions``,
                            ``overlap``, ``comment_count``, ``unresolved_comment_count``)
``annotations``             list of struct: ``id, completed_by, created_at, updated_at,
                            lead_time`` (seconds), ``was_cancelled, ground_truth, result``
                            (the Label Studio result list, JSON), ``extra`` (JSON)
``predictions``             list of struct: ``id, model_version, score, created_at,
                            updated_at, result`` (JSON), ``extra`` (JSON)
``run_id``                  the sync run that wrote the row
==========================  ====================================================================
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import duckdb
import lance
import pyarrow as pa

from ls_space_sync.model.records import row_to_task
from ls_space_sync.model.refs import Ref, from_options
from ls_space_sync.read import export as _export
from ls_space_sync.read import query as _query
from ls_space_sync.read.diff import VersionDiff, diff_versions, open_ref
from ls_space_sync.read.history import ConfigChange, TaskHistory
from ls_space_sync.settings import Settings, load_settings
from ls_space_sync.store.compaction import CompactionReport, compact_project
from ls_space_sync.store.dataset import ProjectStore, check_filter

RefLike = Ref | str | int | None


def _settings(settings: Settings | None, data_dir: str | Path | None) -> Settings:
    if settings is not None and data_dir is not None:
        raise ValueError("give settings or data_dir, not both")
    if settings is not None:
        return settings
    return load_settings(overrides={"data_dir": str(data_dir)} if data_dir is not None else None)


def ref_of(tag: str | None = None, version: int | None = None, as_of: datetime | str | None = None) -> Ref:
    """The :class:`ls_space_sync.model.refs.Ref` of ``tag``/``version``/``as_of`` (at most one).

    Raises:
        BadRef: more than one was given. BadTime: ``as_of`` is not ISO 8601.
    """
    return from_options(tag, version, as_of)


def project_store(project: int, *, settings: Settings | None = None, data_dir: str | Path | None = None) -> ProjectStore:
    """The :class:`ProjectStore` of a project (versions, tags, properties, label config)."""
    return ProjectStore(_settings(settings, data_dir).resolved_store_root, int(project))


def open_dataset(
    project: int,
    tag: str | None = None,
    version: int | None = None,
    as_of: datetime | str | None = None,
    settings: Settings | None = None,
    *,
    data_dir: str | Path | None = None,
) -> lance.LanceDataset:
    """Open a project's dataset at a version (columns: see the module docstring).

    Returns:
        A ``lance.LanceDataset`` pinned to the version: ``.to_table(columns=, filter=)``,
        ``.to_batches()``, ``.count_rows()``; it is also a ``pyarrow.dataset.Dataset``.

    Raises:
        StoreError: the project has no dataset, or no such tag/version/time.
        ValueError: more than one of ``tag``, ``version``, ``as_of``.
    """
    store = project_store(project, settings=settings, data_dir=data_dir)
    return open_ref(store, ref_of(tag, version, as_of))


def read_tasks(
    project: int,
    tag: str | None = None,
    version: int | None = None,
    as_of: datetime | str | None = None,
    settings: Settings | None = None,
    *,
    where: str | None = None,
    data_dir: str | Path | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield a version's tasks as Label Studio task JSON (``GET /api/tasks?fields=all`` shape).

    ``where`` is a SQL predicate on the stored columns, e.g. ``"is_labeled"``.

    Raises:
        StoreError: no dataset or no such version. BadFilter: ``where`` does not parse.
    """
    ds = open_dataset(project, tag, version, as_of, settings, data_dir=data_dir)
    check_filter(ds, where)
    for batch in _export.task_batches(ds, where=where):
        for row in batch.to_pylist():
            yield row_to_task(row)


def connect(
    tag: str | None = None,
    version: int | None = None,
    as_of: datetime | str | None = None,
    settings: Settings | None = None,
    *,
    at: Mapping[int, RefLike] | None = None,
    data_dir: str | Path | None = None,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with every stored project as table ``project_<id>``.

    ``tag``/``version``/``as_of`` choose the version of every table; ``at`` overrides it per
    project, ``{3: "run-000002", 4: 7}``. Close it when done.
    """
    root = _settings(settings, data_dir).resolved_store_root
    return _query.connect(root, ref=ref_of(tag, version, as_of), refs=at)


def sql(
    query: str,
    tag: str | None = None,
    version: int | None = None,
    as_of: datetime | str | None = None,
    settings: Settings | None = None,
    *,
    at: Mapping[int, RefLike] | None = None,
    data_dir: str | Path | None = None,
) -> pa.Table:
    """Run one DuckDB SQL query over the project tables it names; return the result as Arrow.

    See :data:`ls_space_sync.query.EXAMPLES` for worked queries.

    Raises:
        QueryError: DuckDB rejected the query.
        StoreError: a named project has no dataset, or no such version.
    """
    root = _settings(settings, data_dir).resolved_store_root
    return _query.sql(root, query, ref=ref_of(tag, version, as_of), refs=at)


def version_diff(
    project: int, old: RefLike, new: RefLike = None, settings: Settings | None = None, *, details: bool = True,
    data_dir: str | Path | None = None,
) -> VersionDiff:
    """Tasks inserted, updated and deleted from ``old`` to ``new`` (refs: tag, version, ``@time``;
    ``new`` default latest), with annotation/prediction changes of updated tasks."""
    return diff_versions(project_store(project, settings=settings, data_dir=data_dir), old, new, details=details)


def task_history(
    project: int, task: int | None = None, settings: Settings | None = None, *, annotation_id: int | None = None,
    data_dir: str | Path | None = None,
) -> TaskHistory:
    """Every stored version that changed a task (or, with ``annotation_id``, one annotation), oldest
    first: version, tag, run, time (UTC) and what changed, by whom. ``task`` may be left out with
    ``annotation_id``: the annotation's task in the latest version is used.

    Raises:
        StoreError: the project has no dataset. UnknownTask: no stored version holds the task or annotation.
    """
    from ls_space_sync.read import history as _history

    store = project_store(project, settings=settings, data_dir=data_dir)
    if task is None:
        if annotation_id is None:
            raise ValueError("give task or annotation_id")
        task = _history.find_annotation_task(store, int(annotation_id))
    return _history.task_history(store, int(task), annotation_id=annotation_id)


def config_history(
    project: int, settings: Settings | None = None, *, data_dir: str | Path | None = None,
) -> list[ConfigChange]:
    """The label config's changes across a project's stored versions, oldest first, each with a
    unified diff from the config before.

    Raises:
        StoreError: the project has no dataset.
    """
    from ls_space_sync.read import history as _history

    return _history.config_history(project_store(project, settings=settings, data_dir=data_dir))


def export_version(
    project: int,
    path: str | Path,
    format: str = "parquet",
    tag: str | None = None,
    version: int | None = None,
    as_of: datetime | str | None = None,
    settings: Settings | None = None,
    *,
    regions: bool = False,
    where: str | None = None,
    source: str = "annotations",
    data_dir: str | Path | None = None,
    media: str = "auto",
) -> int:
    """Write a version to ``path`` as ``parquet``, ``jsonl`` or ``hf`` (a ``save_to_disk`` folder),
    or ``coco``/``yolo`` (images and labels; needs stored media).

    ``media``: ``auto`` joins stored media when the project has them (``hf``: an ``Image()`` column;
    ``parquet``: sha256 and MIME columns), ``inline`` puts the bytes in the Parquet file, ``ref``
    only their sha256, ``none`` leaves them out (see :func:`ls_space_sync.media.read.export_media`).

    Tasks by default (stored rows in Parquet/HF, Label Studio task JSON in JSONL), or one row per
    region with ``regions=True`` (:data:`ls_space_sync.export.REGION_SCHEMA`). Returns the rows written.

    Raises:
        ValueError: an unknown format.
        MissingExtra: ``format="hf"`` without the ``hf`` extra.
    """
    ds = open_dataset(project, tag, version, as_of, settings, data_dir=data_dir)
    check_filter(ds, where)
    if format in ("hf", "parquet", "coco", "yolo"):  # joined with the version's media (docs/media.md)
        from ls_space_sync.media.read import export_media

        done = export_media(project_store(project, settings=settings, data_dir=data_dir), ds, Path(path), format,
                            media=media, where=where, regions=regions)
        if done is not None:
            return done
    if format == "parquet":
        return _export.write_parquet(ds, Path(path), regions=regions, where=where, source=source)
    if format == "jsonl":
        return _export.write_jsonl(ds, Path(path), regions=regions, where=where, source=source)
    if format == "hf":
        return _export.save_hf(ds, Path(path), regions=regions, where=where, source=source)
    raise ValueError(f"unknown export format {format!r}; use parquet, jsonl, hf, coco or yolo")


def to_hf_dataset(
    project: int,
    tag: str | None = None,
    version: int | None = None,
    as_of: datetime | str | None = None,
    settings: Settings | None = None,
    *,
    regions: bool = False,
    where: str | None = None,
    columns: list[str] | None = None,
    source: str = "annotations",
    data_dir: str | Path | None = None,
) -> Any:
    """A Hugging Face ``datasets.Dataset`` of a version: stored task rows, or regions.

    Raises:
        MissingExtra: ``datasets`` is not installed (``pip install 'ls-space-sync[hf]'``).
    """
    ds = open_dataset(project, tag, version, as_of, settings, data_dir=data_dir)
    return _export.to_hf_dataset(ds, regions=regions, where=where, columns=columns, source=source)


def torch_iterable(
    project: int,
    tag: str | None = None,
    version: int | None = None,
    as_of: datetime | str | None = None,
    settings: Settings | None = None,
    *,
    regions: bool = False,
    where: str | None = None,
    source: str = "annotations",
    transform: Callable[[dict[str, Any]], Any] | None = None,
    data_dir: str | Path | None = None,
    media: bool = False,
    decode: bool = True,
) -> Any:
    """A ``torch.utils.data.IterableDataset`` of task JSON (or region dicts), pinned to a version.

    With ``media=True``: ``(task JSON, PIL image or bytes)`` pairs, the exact bytes the version's
    tasks referenced (``decode=False``: bytes; see :func:`ls_space_sync.media.read.torch_iterable`).

    Use it with ``DataLoader(..., batch_size=None)`` or a ``collate_fn``; with ``num_workers > 0``
    pass ``multiprocessing_context="spawn"`` (or ``"forkserver"``): Lance is not fork-safe.

    Raises:
        MissingExtra: ``torch`` is not installed (``pip install 'ls-space-sync[torch]'``).
    """
    ds = open_dataset(project, tag, version, as_of, settings, data_dir=data_dir)
    if media:
        from ls_space_sync.media.read import torch_iterable as media_torch

        return media_torch(project_store(project, settings=settings, data_dir=data_dir), ds, decode=decode, where=where)
    return _export.torch_iterable(ds, regions=regions, where=where, source=source, transform=transform)


def compact(
    project: int | None = None,
    settings: Settings | None = None,
    *,
    retention_seconds: float | None = None,
    keep_tags_count: int | None = None,
    keep_tags_days: float | None = None,
    dry_run: bool = False,
    data_dir: str | Path | None = None,
) -> list[CompactionReport]:
    """Compact one project's dataset, or every stored one; return one report per project.

    Args:
        project: the project id; ``None`` for every project with a stored dataset.
        retention_seconds, keep_tags_count, keep_tags_days, dry_run: as
            :func:`ls_space_sync.store.compaction.compact_project` (defaults from ``compaction:``).

    Returns:
        One :class:`ls_space_sync.store.compaction.CompactionReport` per project, ascending by id
        when ``project`` is ``None``.

    Raises:
        ProjectLocked: a sync or another compaction holds a project's lock.
        StoreError: a tag cannot be read, or cleanup would remove a file a tag reads (refused).
    """
    resolved = _settings(settings, data_dir)
    ids = [int(project)] if project is not None else _query.stored_projects(resolved.resolved_store_root)
    return [
        compact_project(resolved, pid, retention_seconds=retention_seconds, keep_tags_count=keep_tags_count,
                        keep_tags_days=keep_tags_days, dry_run=dry_run)
        for pid in ids
    ]


# --- views and dataframe readers (issue 13) ------------------------------------------------------

def open_view(
    view: str,
    tag: str | None = None,
    version: int | None = None,
    as_of: datetime | str | None = None,
    settings: Settings | None = None,
    *,
    data_dir: str | Path | None = None,
) -> lance.LanceDataset:
    """Open a materialized view (``views:`` in the config, or found in the store) at a version.

    Views carry their source's tags: ``open_view("regions", tag="run-000002")`` holds the regions
    of the source at ``run-000002``.

    Raises:
        StoreError: the view was never built, or has no such tag/version/time.
        ViewConfigError: no view of that name configured or stored.
    """
    from ls_space_sync.views.store import ViewStore, stored_views
    from ls_space_sync.views.transforms import ViewConfigError

    resolved = _settings(settings, data_dir)
    pids = [v.project for v in resolved.views if v.name == view] or stored_views(resolved.resolved_store_root).get(view, [])
    if len(pids) != 1:
        raise ViewConfigError(f"no view named {view!r} is configured or stored" if not pids else
                              f"view {view!r} is stored for projects {pids}; configure which one in views:")
    store = ViewStore(ProjectStore(resolved.resolved_store_root, pids[0]), view)
    return open_ref(store, ref_of(tag, version, as_of))


def _source_or_view(project: int | None, view: str | None, tag: str | None, version: int | None,
                    as_of: datetime | str | None, settings: Settings | None,
                    data_dir: str | Path | None) -> lance.LanceDataset:
    if (project is None) == (view is None):
        raise ValueError("give a project id or view=NAME (one of them)")
    if view is not None:
        return open_view(view, tag, version, as_of, settings, data_dir=data_dir)
    assert project is not None
    return open_dataset(project, tag, version, as_of, settings, data_dir=data_dir)


def to_ray(
    project: int | None = None,
    tag: str | None = None,
    version: int | None = None,
    as_of: datetime | str | None = None,
    settings: Settings | None = None,
    *,
    view: str | None = None,
    columns: list[str] | None = None,
    where: str | None = None,
    data_dir: str | Path | None = None,
) -> Any:
    """A Ray Data ``Dataset`` of a project's tasks or a view (``view="regions"``), pinned to a version.

    ``ray.data.read_lance`` at the resolved version number, so the rows never move under a running
    job. Uses the Ray already initialised, else starts a local one.

    Raises:
        MissingRay: Ray Data is not installed (``pip install 'ls-space-sync[ray]'``).
        StoreError: no dataset or no such version. BadFilter: ``where`` does not parse.
    """
    from ls_space_sync.views.ray_executor import MissingRay

    ds = _source_or_view(project, view, tag, version, as_of, settings, data_dir)
    check_filter(ds, where)
    try:
        import ray.data
    except ImportError:
        raise MissingRay("to_ray needs Ray Data: pip install 'ls-space-sync[ray]'") from None
    options = {"filter": where} if where else None
    return ray.data.read_lance(ds.uri, version=ds.version, columns=columns, scanner_options=options)


def to_polars(
    project: int | None = None,
    tag: str | None = None,
    version: int | None = None,
    as_of: datetime | str | None = None,
    settings: Settings | None = None,
    *,
    view: str | None = None,
    lazy: bool = False,
    columns: list[str] | None = None,
    where: str | None = None,
    data_dir: str | Path | None = None,
) -> Any:
    """A Polars ``DataFrame`` (or, with ``lazy=True``, a ``LazyFrame`` that scans the Lance dataset
    through ``pl.scan_pyarrow_dataset``) of a project's tasks or a view, at a version.

    Raises:
        MissingExtra: Polars is not installed (``pip install 'ls-space-sync[polars]'``).
        StoreError: no dataset or no such version. BadFilter: ``where`` does not parse.
    """
    ds = _source_or_view(project, view, tag, version, as_of, settings, data_dir)
    check_filter(ds, where)
    try:
        import polars as pl
    except ImportError:
        raise _export.MissingExtra("to_polars needs Polars: pip install 'ls-space-sync[polars]'") from None
    if lazy:
        if where:
            raise ValueError("with lazy=True filter the LazyFrame itself (.filter(...)), not with where=")
        frame = pl.scan_pyarrow_dataset(ds)
        return frame.select(columns) if columns else frame
    return pl.from_arrow(ds.to_table(columns=columns, filter=where))
