"""A version of a project's dataset for training: files, Hugging Face datasets, PyTorch iterables.

Two shapes:

- **tasks** (default): one row per task. Parquet and Hugging Face get the stored columns
  (:mod:`ls_space_sync.records`); JSONL and the PyTorch iterable give Label Studio task JSON
  (``GET /api/tasks?fields=all``), exactly as pulled.
- **regions** (``regions=True``): one row per region of an annotation (or prediction) result,
  :data:`REGION_SCHEMA` -- the label, box (``x, y, width, height`` in percent of the image) or span
  (``start, end`` character offsets, ``text``), who made it, plus the task's ``data_json`` so a row
  is a training example by itself.

Every reader streams the dataset in batches (Lance scans with an optional ``where`` filter in SQL,
e.g. ``"is_labeled"`` or ``"total_annotations > 1"``); only :func:`to_hf_dataset` holds the result
in memory (as Arrow).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import lance
import pyarrow as pa
import pyarrow.parquet as pq

from ls_space_sync.errors import Terminal
from ls_space_sync.model.records import region_rows, row_to_task

BATCH_ROWS = 1024

REGION_SCHEMA = pa.schema(
    [
        ("task_id", pa.int64()),
        ("source", pa.string()),  # "annotation" or "prediction"
        ("item_id", pa.int64()),  # the annotation's or prediction's id
        ("author", pa.int64()),  # completed_by (annotations)
        ("model_version", pa.string()),  # predictions
        ("from_name", pa.string()),  # the control tag, e.g. "sentiment"
        ("to_name", pa.string()),  # the object tag, e.g. "text"
        ("type", pa.string()),  # choices, labels, rectanglelabels, ...
        ("label", pa.string()),  # the first label/choice, or the rating/number value
        ("labels", pa.list_(pa.string())),  # all labels/choices of the region
        ("x", pa.float64()),
        ("y", pa.float64()),
        ("width", pa.float64()),
        ("height", pa.float64()),
        ("start", pa.int64()),  # character offsets of a text span (None for other offsets)
        ("end", pa.int64()),
        ("text", pa.string()),  # the span's text
        ("value", pa.string()),  # the region's whole ``value`` as JSON
        ("data_json", pa.string()),  # the task's data as JSON
    ]
)


class MissingExtra(Terminal, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def require(module: str, extra: str, what: str) -> Any:
    """Import an optional dependency, or raise :class:`MissingExtra` naming the pip extra."""
    try:
        return __import__(module)
    except ImportError as exc:
        raise MissingExtra(
            f"{what} needs the optional dependency {module!r}: pip install 'ls-space-sync[{extra}]'"
        ) from exc


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


def _float(value: Any) -> float | None:
    return float(value) if type(value) in (int, float) else None


def regions_of(row: dict[str, Any], source: str = "annotations") -> list[dict[str, Any]]:
    """Flatten a stored row's annotations (or predictions) into :data:`REGION_SCHEMA` dicts."""
    task = row_to_task(row)
    out = []
    for region in region_rows(task, source):
        value = json.loads(region["value"]) if region["value"] else {}
        kind = region["type"]
        labels = value.get(kind) if kind else None
        out.append(
            {
                "task_id": region["task_id"],
                "source": source[:-1],
                "item_id": region[f"{source[:-1]}_id"],
                "author": region["author"],
                "model_version": region["model_version"],
                "from_name": region["from_name"],
                "to_name": region["to_name"],
                "type": kind,
                "label": None if region["label"] is None else str(region["label"]),
                "labels": [str(v) for v in labels] if isinstance(labels, list) else None,
                **{k: _float(region.get(k)) for k in ("x", "y", "width", "height")},
                **{k: _int(region.get(k)) for k in ("start", "end")},
                "text": value.get("text") if isinstance(value.get("text"), str) else None,
                "value": region["value"],
                "data_json": row.get("data_json"),
            }
        )
    return out


def task_batches(
    ds: lance.LanceDataset, *, where: str | None = None, columns: list[str] | None = None,
    fragments: list[Any] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Stream the rows of a dataset version (optionally filtered, some columns, some fragments)."""
    # scanner(), not to_batches(): pylance 14's to_batches ignores ``fragments``.
    scanner = ds.scanner(columns=columns, filter=where, batch_size=BATCH_ROWS, fragments=fragments)
    yield from scanner.to_batches()


def region_batches(
    ds: lance.LanceDataset, *, where: str | None = None, source: str = "annotations",
    fragments: list[Any] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Stream one-row-per-region batches (:data:`REGION_SCHEMA`); ``source`` is ``annotations`` or ``predictions``."""
    if source not in ("annotations", "predictions"):
        raise ValueError(f"source must be 'annotations' or 'predictions', not {source!r}")
    for batch in task_batches(ds, where=where, fragments=fragments):
        rows = [r for row in batch.to_pylist() for r in regions_of(row, source)]
        if rows:
            yield pa.RecordBatch.from_pylist(rows, schema=REGION_SCHEMA)


def write_parquet(ds: lance.LanceDataset, path: Path, *, regions: bool = False, where: str | None = None,
                  source: str = "annotations") -> int:
    """Write a version's rows (or regions) to one Parquet file; return the row count."""
    schema = REGION_SCHEMA if regions else ds.schema
    batches = region_batches(ds, where=where, source=source) if regions else task_batches(ds, where=where)
    count = 0
    with pq.ParquetWriter(str(path), schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
            count += batch.num_rows
    return count


def iter_items(ds: lance.LanceDataset, *, regions: bool = False, where: str | None = None,
               source: str = "annotations", fragments: list[Any] | None = None) -> Iterator[dict[str, Any]]:
    """Yield Label Studio task JSON objects, or region dicts with ``regions=True``."""
    if regions:
        for batch in region_batches(ds, where=where, source=source, fragments=fragments):
            yield from batch.to_pylist()
        return
    for batch in task_batches(ds, where=where, fragments=fragments):
        for row in batch.to_pylist():
            yield row_to_task(row)


def write_jsonl(ds: lance.LanceDataset, path: Path, *, regions: bool = False, where: str | None = None,
                source: str = "annotations") -> int:
    """Write one JSON object per line: Label Studio task JSON, or regions. Returns the line count."""
    count = 0
    with Path(path).open("w", encoding="utf-8") as out:
        for item in iter_items(ds, regions=regions, where=where, source=source):
            out.write(json.dumps(item, ensure_ascii=False) + "\n")
            count += 1
    return count


def to_hf_dataset(ds: lance.LanceDataset, *, regions: bool = False, where: str | None = None,
                  columns: list[str] | None = None, source: str = "annotations") -> Any:
    """Return a Hugging Face ``datasets.Dataset`` of a version's rows (or regions), held in memory.

    Columns keep their Arrow types (``created_at`` stays ``timestamp[us, tz=UTC]``, ``annotations``
    a list of structs). For projects larger than memory, export Parquet and use
    ``datasets.load_dataset("parquet", data_files=...)``, which memory-maps.

    Raises:
        MissingExtra: ``datasets`` is not installed (extra ``hf``).
    """
    datasets = require("datasets", "hf", "to_hf_dataset")
    if regions:
        table = pa.Table.from_batches(list(region_batches(ds, where=where, source=source)), schema=REGION_SCHEMA)
        if columns:
            table = table.select(columns)
    else:
        table = ds.to_table(columns=columns, filter=where)
    return datasets.Dataset(table)


def save_hf(ds: lance.LanceDataset, path: Path, **options: Any) -> int:
    """Save :func:`to_hf_dataset` with ``save_to_disk`` (load with ``datasets.load_from_disk``); return rows."""
    dataset = to_hf_dataset(ds, **options)
    dataset.save_to_disk(str(path))
    return dataset.num_rows


def torch_iterable(ds: lance.LanceDataset, *, regions: bool = False, where: str | None = None,
                   source: str = "annotations", transform: Callable[[dict[str, Any]], Any] | None = None) -> Any:
    """Return a ``torch.utils.data.IterableDataset`` over a version's task JSON (or region dicts).

    Items are what :func:`iter_items` yields, passed through ``transform`` if given (tokenize,
    load the image, ...). With a ``DataLoader(num_workers=N)`` each worker reads its own share of
    the version's fragments, so no item comes twice. The version is pinned: a sync that commits
    meanwhile does not change what is read. Use ``batch_size=None`` or a ``collate_fn`` for dicts
    of strings.

    Raises:
        MissingExtra: ``torch`` is not installed (extra ``torch``).
    """
    require("torch", "torch", "torch_iterable")
    # The dataset's own storage options (an object store's endpoint), for each worker's reopen.
    options = ds.initial_storage_options
    return _lance_tasks_class()(ds.uri, ds.version, regions=regions, where=where, source=source, transform=transform,
                                storage_options=options)


@functools.cache
def _lance_tasks_class() -> type:
    """Build the ``IterableDataset`` class on first use, so importing this module needs no torch."""
    from torch.utils.data import IterableDataset, get_worker_info

    class LanceTasks(IterableDataset):
        """Items of one Lance dataset version, sharded over DataLoader workers by fragment."""

        def __init__(self, uri: str, version: int, *, regions: bool, where: str | None, source: str,
                     transform: Callable[[dict[str, Any]], Any] | None,
                     storage_options: dict[str, str] | None = None) -> None:
            super().__init__()
            self.uri, self.version, self.storage_options = uri, version, storage_options
            self.regions, self.where, self.source, self.transform = regions, where, source, transform

        def __iter__(self) -> Iterator[Any]:
            ds = lance.dataset(self.uri, version=self.version, storage_options=self.storage_options)
            fragments = ds.get_fragments()
            worker = get_worker_info()
            if worker is not None:
                fragments = fragments[worker.id::worker.num_workers]
                if not fragments:
                    return
            for item in iter_items(ds, regions=self.regions, where=self.where, source=self.source,
                                   fragments=fragments):
                yield self.transform(item) if self.transform else item

    # Picklable by name (DataLoader workers started with spawn import it through __getattr__ below).
    LanceTasks.__module__, LanceTasks.__qualname__ = __name__, "LanceTasks"
    return LanceTasks


def __getattr__(name: str) -> Any:
    if name == "LanceTasks":
        return _lance_tasks_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

