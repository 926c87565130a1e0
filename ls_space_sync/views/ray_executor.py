"""The Ray Data executor of view transforms (``executor: ray``), for transforms too heavy for one process.

``ray.data.read_lance`` reads the source version (only the changed tasks' rows, by a Lance filter on
``id``, in an incremental refresh) -> ``map_batches`` runs the transform on Ray's workers (Arrow
batches in, Arrow out) -> the driver streams the results into the view's one Lance commit, the
same commit as the in-process executor's (so the view version carries its properties and tags).

Ray is an extra: ``pip install 'ls-space-sync[ray]'``. A Ray already initialised by the caller
(``ray.init(address=...)``, a cluster) is used as it is; otherwise a local one starts on first use.
A Python transform must be importable on the workers (same ``PYTHONPATH``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import lance
import pyarrow as pa

from ls_space_sync.errors import Terminal
from ls_space_sync.views.transforms import Transform, TransformError

# Rows per Ray batch handed to the transform.
BATCH_ROWS = 10_000


class MissingRay(Terminal):
    """``executor: ray`` without Ray installed; exit code 2."""

    exit_code = 2


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401 - the Data library is a separate import
    except ImportError:
        raise MissingRay("a view has executor: ray but Ray Data is not installed: "
                         "pip install 'ls-space-sync[ray]'") from None
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    return ray


# A worker's transform error comes back as a one-row table with this column: Ray 2.60 wraps user
# errors in a UserCodeException that keeps neither the error nor its message.
_ERROR = "__ls_space_sync_transform_error__"


class _Apply:
    """The transform as a picklable batch function for ``map_batches``."""

    def __init__(self, transform: Transform):
        self.transform = transform

    def __call__(self, batch: pa.Table) -> pa.Table:
        try:
            return self.transform.apply(batch)
        except TransformError as exc:
            return pa.table({_ERROR: [str(exc)]})


def _read(ds: lance.LanceDataset, filter: str | None, storage_options: dict[str, str] | None) -> Any:
    ray = _ray()
    # The filter goes to Lance's scanner (``scanner_options``): read_lance's own ``filter`` argument
    # is deprecated in Ray 2.60.
    options = {"filter": filter} if filter else None
    return ray.data.read_lance(ds.uri, version=ds.version, scanner_options=options, storage_options=storage_options)


def _unwrap(exc: BaseException) -> BaseException:
    """The transform's own error inside Ray's wrappers (``UserCodeException`` caused by a
    ``RayTaskError`` that keeps it as ``cause``), else the innermost one."""
    seen: set[int] = set()
    current: BaseException | None = exc
    last = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, TransformError):
            return current
        seen.add(id(current))
        last = current
        cause = getattr(current, "cause", None)
        current = cause if isinstance(cause, BaseException) else (current.__cause__ or current.__context__)
    return last


def apply_ids(transform: Transform, ds: lance.LanceDataset, ids: Sequence[int],
              storage_options: dict[str, str] | None = None) -> pa.Table:
    """The view rows of tasks ``ids`` of the source version ``ds``, computed on Ray.

    Raises:
        TransformError: the transform failed on a worker (its message).
        MissingRay: Ray is not installed.
    """
    if not ids:
        return transform.apply(ds.schema.empty_table())
    data = _read(ds, f"id IN ({', '.join(str(int(i)) for i in ids)})", storage_options)
    with _worker_errors(transform):
        tables = list(_batches(data.map_batches(_Apply(transform), batch_format="pyarrow", batch_size=BATCH_ROWS)))
    tables = [t for t in tables if t.num_columns]
    if not tables:
        return transform.apply(ds.schema.empty_table())
    return pa.concat_tables(tables, promote_options="permissive")


def apply_all(transform: Transform, ds: lance.LanceDataset,
              storage_options: dict[str, str] | None = None) -> Iterator[pa.Table]:
    """The view rows of every task of the source version ``ds``, computed on Ray, as they arrive.

    Raises:
        TransformError: the transform failed on a worker (its message).
    """
    data = _read(ds, None, storage_options).map_batches(_Apply(transform), batch_format="pyarrow",
                                                         batch_size=BATCH_ROWS)
    with _worker_errors(transform):
        for table in _batches(data):
            if table.num_columns:
                yield table


@contextmanager
def _worker_errors(transform: Transform) -> Iterator[None]:
    """Turn what Ray raises for a failed worker into the transform's :class:`TransformError`."""
    try:
        yield
    except TransformError:
        raise
    except Exception as exc:  # noqa: BLE001 - Ray wraps the worker's error
        inner = _unwrap(exc)
        if isinstance(inner, TransformError):
            raise TransformError(str(inner)) from None
        raise TransformError(f"the transform {transform.label} failed on Ray: {type(inner).__name__}: {inner}") from None


def _batches(data: Any) -> Iterator[pa.Table]:
    for batch in data.iter_batches(batch_format="pyarrow", batch_size=None):
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        if _ERROR in table.column_names:
            raise TransformError(table.column(_ERROR)[0].as_py())
        yield table
