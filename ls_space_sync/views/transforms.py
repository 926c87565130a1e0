"""A view's transform: DuckDB SQL over the table ``tasks``, or a Python ``module:function``.

Both map task rows (the stored row format, :mod:`ls_space_sync.model.records`) to view rows, and
both must be *task-local*: the view rows of a task depend on that task's row alone, and each
carries the task's id in ``task_id``. That is what lets a refresh recompute only the tasks a run
changed. The *fingerprint* (SHA-256 of the SQL text, or of the callable's source from
``inspect.getsource`` with its ``module:function`` name) is stored with every view version; a
changed fingerprint makes the next refresh a full rebuild.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pyarrow as pa

from ls_space_sync.errors import LsSpaceSyncError, Terminal
from ls_space_sync.settings import ViewSettings
from ls_space_sync.views.builtins import BUILTINS

# Task rows handed to a Python transform at a time in a full rebuild.
BATCH_ROWS = 10_000


class ViewConfigError(Terminal):
    """A view whose transform cannot be loaded (no such module or function); exit code 2."""

    exit_code = 2


class TransformError(LsSpaceSyncError):
    """A transform that raised, or returned rows a view cannot store; the message says which and why."""


@dataclass(frozen=True)
class Transform:
    """A loaded transform: ``kind`` is ``sql`` (built-ins are SQL too) or ``python``.

    Attributes:
        text: the SQL text, or ``module:function`` for Python.
        primary_key: the view's primary key, ``task_id`` first.
        fingerprint: ``sha256:<hex>`` of what the transform computes (see the module docstring).
    """

    kind: str
    text: str
    primary_key: tuple[str, ...]
    fingerprint: str
    function: Callable[[pa.Table], Any] | None = None

    def apply(self, tasks: pa.Table) -> pa.Table:
        """Map task rows to view rows (any number, each with ``task_id``).

        Raises:
            TransformError: the transform raised (its message, with the exception's type), or
                returned no Arrow table/batch, or rows without the primary key's columns.
        """
        try:
            if self.kind == "sql":
                out = _sql(self.text, tasks)
            else:
                assert self.function is not None
                out = self.function(tasks)
        except Exception as exc:  # noqa: BLE001 - any error of user code fails the refresh, with its message
            raise TransformError(f"the transform {self.label} raised {type(exc).__name__}: {exc}") from exc
        return self.check(out)

    def apply_batches(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.Table]:
        """:meth:`apply` to each batch of task rows in turn."""
        for batch in batches:
            yield self.apply(pa.Table.from_batches([batch]))

    @property
    def label(self) -> str:
        """How messages name it: ``python:pkg.mod:fn`` or ``sql``."""
        return f"python:{self.text}" if self.kind == "python" else "sql"

    def check(self, out: Any) -> pa.Table:
        """Return ``out`` as a table if it is one (or a batch) with the primary key's columns.

        Raises:
            TransformError: otherwise.
        """
        if isinstance(out, pa.RecordBatch):
            out = pa.Table.from_batches([out])
        if not isinstance(out, pa.Table):
            raise TransformError(f"the transform {self.label} returned {type(out).__name__}, not a pyarrow.Table")
        missing = [c for c in self.primary_key if c not in out.column_names]
        if missing:
            raise TransformError(f"the transform {self.label} returned rows without the primary key column(s) "
                                 f"{', '.join(missing)} (columns: {', '.join(out.column_names)})")
        if not pa.types.is_integer(out.schema.field("task_id").type):
            raise TransformError(f"the transform {self.label} returned task_id of type {out.schema.field('task_id').type}; "
                                 "it must be the task's integer id")
        return out


def load(view: ViewSettings) -> Transform:
    """Load a configured view's transform.

    Raises:
        ViewConfigError: a ``python`` transform whose module or function cannot be imported.
    """
    if view.builtin:
        sql, key = BUILTINS[view.builtin]
        return Transform("sql", sql, tuple(view.primary_key or key), _digest("sql", sql))
    if view.sql:
        assert view.primary_key
        return Transform("sql", view.sql, tuple(view.primary_key), _digest("sql", view.sql))
    assert view.python and view.primary_key
    module_name, _, attr = view.python.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ViewConfigError(f"view {view.name!r}: cannot load python transform {view.python!r} ({exc}); "
                              "make the module importable (PYTHONPATH) and check the function's name") from None
    if not callable(fn):
        raise ViewConfigError(f"view {view.name!r}: {view.python!r} is not a function")
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):  # a builtin or C function: its qualified name is all there is
        source = repr(fn)
    return Transform("python", view.python, tuple(view.primary_key), _digest("python", view.python, source), fn)


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return "sha256:" + h.hexdigest()


def connect_duckdb() -> Any:
    """An in-memory DuckDB connection in UTC (timestamps come back as ``timestamp[us, tz=UTC]``)."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con


_local = threading.local()


def _sql(query: str, tasks: Any) -> pa.Table:
    """Run ``query`` with ``tasks`` (an Arrow table or a Lance/Arrow dataset) as the table ``tasks``.

    One connection per thread, kept: opening one costs ~50 ms, more than a small change set's query.
    """
    con = getattr(_local, "con", None)
    if con is None:
        con = _local.con = connect_duckdb()
    con.register("tasks", tasks)
    try:
        out: pa.Table = con.sql(query).to_arrow_table()
    finally:
        con.unregister("tasks")
    return out


def sql_reader(query: str, tasks: Any, rows_per_batch: int = 100_000) -> tuple[Any, pa.RecordBatchReader]:
    """Stream ``query`` over ``tasks`` (a whole dataset, for a full rebuild); returns the connection
    (close it after reading) and a reader of the result."""
    con = connect_duckdb()
    con.register("tasks", tasks)
    return con, con.sql(query).to_arrow_reader(rows_per_batch)
