"""Read a stored version's tasks joined with the exact bytes of their media.

Which bytes: the media refs at the task version's tag (``refs@run-000042``, tagged by the same
run); for a version no run tagged (a compaction's), the newest tag before it; for a store whose
refs carry no such tag (media turned on later), the refs version current when the task version
was committed (a run commits its refs before its task version, so that is the run's own).

Readers (all stream the task version in batches; bytes are read per batch with ``take_blobs``):

- :func:`rows_with_media`: ``(task JSON, {key: Media})`` pairs, the base of the others.
- :func:`to_hf_dataset`: a Hugging Face ``datasets.Dataset`` with an ``Image()`` (or ``Audio()``)
  feature per media key, in memory.
- :func:`write_parquet`: the stored rows plus ``<key>_sha256``, ``<key>_mime`` and either the
  bytes (``<key>_bytes``, inline) or nothing more (by reference: read them with
  :meth:`MediaReader.read`).
- :func:`torch_iterable`: an ``IterableDataset`` of ``(task JSON, PIL image or bytes)``.
- :func:`write_coco` / :func:`write_yolo`: the images and label-studio-sdk's converter's labels.
"""

from __future__ import annotations

import json
import mimetypes
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import lance
import pyarrow as pa
import pyarrow.parquet as pq

from ls_space_sync.errors import UsageError
from ls_space_sync.media.keys import media_keys
from ls_space_sync.media.store import MediaStore
from ls_space_sync.model.records import row_to_task
from ls_space_sync.store.dataset import ProjectStore, Root, version_time

BATCH_ROWS = 256


@dataclass
class Media:
    """One task's file: its URL in the task data, sha256, MIME type, size in bytes, and the bytes
    (``None`` when not read, or when the URL was never stored: then ``sha256`` is ``None`` too)."""

    url: str
    sha256: str | None
    mime: str | None = None
    size: int | None = None
    data: bytes | None = None


class MediaReader:
    """The media of one task version: ``mapping`` (URL -> sha256 at that version) and the bytes.

    Args:
        store: the project's store.
        ds: the task dataset at the version to read.
        keys: task data keys that hold media (default: the version's label config's media tags).
    """

    def __init__(self, store: ProjectStore, ds: lance.LanceDataset, keys: list[str] | None = None):
        self.store, self.ds = store, ds
        self.media = MediaStore(store)
        self.keys = keys if keys is not None else media_keys(store.label_config(ds.version))
        self.refs_ref = self._refs_ref()
        self.mapping = self.media.mapping(self.refs_ref) if self.refs_ref is not None else {}
        self._info: dict[str, dict[str, Any]] | None = None

    def _refs_ref(self) -> int | str | None:
        refs = self.media.refs()
        if refs is None:
            return None
        refs_tags = refs.tags.list()
        task_tags = sorted(((v, n) for n, v in self.store.tags().items() if v <= self.ds.version), reverse=True)
        for _, name in task_tags:
            if name in refs_tags:
                return name
        committed = version_time(next(v["timestamp"] for v in self.ds.versions() if v["version"] == self.ds.version))
        before = [v["version"] for v in refs.versions() if version_time(v["timestamp"]) <= committed]
        return max(before) if before else None

    def info(self) -> dict[str, dict[str, Any]]:
        """``{sha256: {size, mime, width, height, url, _rowid}}`` of every stored blob (read once)."""
        if self._info is None:
            self._info = self.media.blob_info()
        return self._info

    def read(self, shas: list[str]) -> dict[str, bytes]:
        """The bytes of these blobs, by sha256 (only these files are read)."""
        info = self.info()
        order = [s for s in dict.fromkeys(shas) if s in info]
        blobs = self.media.blobs()
        if blobs is None or not order:
            return {}
        out = {}
        for sha, f in zip(order, blobs.take_blobs("blob", ids=[info[s]["_rowid"] for s in order])):
            if f is not None:
                with f:
                    out[sha] = f.readall()
        return out

    def media_of(self, task: dict[str, Any]) -> dict[str, Media]:
        """``{key: Media}`` (without bytes) for the media keys a task's data has."""
        data = task.get("data")
        if not isinstance(data, dict):
            data = {}
        out = {}
        for key in self.keys:
            url = data.get(key)
            if isinstance(url, str):
                sha = self.mapping.get(url.strip())
                meta = self.info().get(sha, {}) if sha else {}
                out[key] = Media(url, sha, meta.get("mime"), meta.get("size"))
        return out


def rows_with_media(reader: MediaReader, *, where: str | None = None, with_bytes: bool = True,
                    fragments: list[Any] | None = None) -> Iterator[tuple[dict[str, Any], dict[str, Any], dict[str, Media]]]:
    """Yield ``(stored row, task JSON, {key: Media})`` of a version, bytes read a batch at a time."""
    scanner = reader.ds.scanner(filter=where, batch_size=BATCH_ROWS, fragments=fragments)
    for batch in scanner.to_batches():
        rows = batch.to_pylist()
        tasks = [row_to_task(r) for r in rows]
        media = [reader.media_of(t) for t in tasks]
        if with_bytes:
            data = reader.read([m.sha256 for ms in media for m in ms.values() if m.sha256])
            for ms in media:
                for m in ms.values():
                    m.data = data.get(m.sha256) if m.sha256 else None
        yield from zip(rows, tasks, media)


def _column(key: str, names: list[str]) -> str:
    return key if key not in names else f"{key}_media"


def to_hf_dataset(reader: MediaReader, *, where: str | None = None, decode: bool = True) -> Any:
    """A Hugging Face ``datasets.Dataset`` of the version's rows plus one media column per key.

    The column is named as the key (``image``), or ``<key>_media`` if a stored column has that
    name; its feature is ``datasets.Image()`` when the key's files are images, ``Audio()`` when
    audio (decoding needs the ``soundfile``/``torchcodec`` packages ``datasets`` asks for), else
    raw binary. A URL with no stored bytes gives ``None``. Held in memory: for large versions
    write Parquet by reference instead.
    """
    import datasets

    names = list(reader.ds.schema.names)
    rows: list[dict[str, Any]] = []
    kinds: dict[str, set[str]] = {k: set() for k in reader.keys}
    for row, _, media in rows_with_media(reader, where=where):
        for key in reader.keys:
            m = media.get(key)
            if m is not None and m.data is not None:
                kinds[key].add((m.mime or "").split("/")[0])
                row[_column(key, names)] = {"bytes": m.data, "path": Path(m.url.split("?")[0]).name}
            else:
                row[_column(key, names)] = None
        rows.append(row)
    media_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = reader.ds.schema
    for key in reader.keys:
        schema = schema.append(pa.field(_column(key, names), media_type))
    table = pa.Table.from_pylist(rows, schema=schema)
    dataset = datasets.Dataset(table)
    for key in reader.keys:
        column = _column(key, names)
        if kinds[key] == {"image"}:
            dataset = dataset.cast_column(column, datasets.Image(decode=decode))
        elif kinds[key] == {"audio"}:
            dataset = dataset.cast_column(column, datasets.Audio(decode=decode))
    return dataset


def write_parquet(reader: MediaReader, path: Path, *, where: str | None = None, inline: bool = True) -> int:
    """Write the version's rows plus ``<key>_sha256``, ``<key>_mime`` (and ``<key>_bytes`` when
    ``inline``) to one Parquet file, a batch at a time; return the row count."""
    schema = reader.ds.schema
    for key in reader.keys:
        schema = schema.append(pa.field(f"{key}_sha256", pa.string())).append(pa.field(f"{key}_mime", pa.string()))
        if inline:
            schema = schema.append(pa.field(f"{key}_bytes", pa.large_binary()))
    count = 0
    with pq.ParquetWriter(str(path), schema) as writer:
        batch: list[dict[str, Any]] = []
        for row, _, media in rows_with_media(reader, where=where, with_bytes=inline):
            for key in reader.keys:
                m = media.get(key)
                row[f"{key}_sha256"] = m.sha256 if m else None
                row[f"{key}_mime"] = m.mime if m else None
                if inline:
                    row[f"{key}_bytes"] = m.data if m else None
            batch.append(row)
            if len(batch) >= BATCH_ROWS:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                count, batch = count + len(batch), []
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            count += len(batch)
    return count


class MediaItems:
    """The items of :func:`torch_iterable`: a picklable callable over a task version's media."""

    def __init__(self, root: Root, project: int, version: int, storage_options: dict[str, str] | None,
                 keys: list[str] | None, decode: bool, where: str | None):
        self.root, self.project, self.version, self.storage_options = root, project, version, storage_options
        self.keys, self.decode, self.where = keys, decode, where

    def __call__(self, fragments_of: Any = None) -> Iterator[tuple[dict[str, Any], Any]]:
        store = ProjectStore(self.root, self.project)
        store.storage_options = self.storage_options
        ds = store.dataset(self.version)
        reader = MediaReader(store, ds, self.keys)
        fragments = fragments_of(ds.get_fragments()) if fragments_of else None
        if fragments_of and not fragments:
            return
        for _, task, media in rows_with_media(reader, where=self.where, fragments=fragments):
            values = {k: self._value(m) for k, m in media.items()}
            yield task, (next(iter(values.values()), None) if len(reader.keys) == 1 else values)

    def _value(self, m: Media) -> Any:
        if m.data is None or not self.decode or not (m.mime or "").startswith("image/"):
            return m.data
        import io

        from PIL import Image

        image = Image.open(io.BytesIO(m.data))
        image.load()
        return image


def torch_iterable(store: ProjectStore, ds: lance.LanceDataset, *, keys: list[str] | None = None,
                   decode: bool = True, where: str | None = None) -> Any:
    """A ``torch.utils.data.IterableDataset`` of ``(task JSON, media)`` pinned to a version.

    ``media`` is a PIL image (``decode=True`` and an image), else the bytes, ``None`` if not
    stored; a dict ``{key: ...}`` when the label config has several media keys. The task JSON
    carries its annotations and predictions (the regions). With ``DataLoader(num_workers=N)``
    each worker reads its own share of the version's fragments.
    """
    from torch.utils.data import IterableDataset, get_worker_info

    items = MediaItems(store.root, store.project_id, ds.version, store.storage_options, keys, decode, where)

    class TasksWithMedia(IterableDataset):
        def __iter__(self) -> Iterator[tuple[dict[str, Any], Any]]:
            worker = get_worker_info()
            if worker is None:
                return items()
            return items(lambda fragments: fragments[worker.id::worker.num_workers])

    return TasksWithMedia()


def _write_images(reader: MediaReader, out: Path, where: str | None) -> tuple[Path, int]:
    """Write each task's image to ``out/images`` and the tasks (paths rewritten) to a JSON file."""
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    key = reader.keys[0]
    tasks = []
    for _, task, media in rows_with_media(reader, where=where):
        m = media.get(key)
        if m is None or m.data is None or m.sha256 is None:
            continue
        ext = mimetypes.guess_extension(m.mime or "") or Path(m.url.split("?")[0]).suffix or ".bin"
        target = images / f"{task['id']}-{m.sha256[:12]}{ext}"
        target.write_bytes(m.data)
        task["data"][key] = str(target.resolve())
        tasks.append(task)
    fd, name = tempfile.mkstemp(suffix=".json", dir=out)
    with open(fd, "w", encoding="utf-8") as f:
        json.dump(tasks, f)
    return Path(name), len(tasks)


def _converter(reader: MediaReader) -> Any:
    from label_studio_sdk.converter import Converter

    config = reader.store.label_config(reader.ds.version) or ""
    return Converter(config=config, project_dir=None, download_resources=False)


def write_coco(reader: MediaReader, out: Path, *, where: str | None = None) -> int:
    """Write ``out/images/*`` and ``out/result.json`` (COCO, label-studio-sdk's converter); return images."""
    tasks, count = _write_images(reader, out, where)
    try:
        _converter(reader).convert_to_coco(str(tasks), str(out), output_image_dir=str(out / "images"), is_dir=False)
    finally:
        tasks.unlink(missing_ok=True)
    return count


def write_yolo(reader: MediaReader, out: Path, *, where: str | None = None) -> int:
    """Write ``out/images/*``, ``out/labels/*.txt`` and ``out/classes.txt`` (YOLO, label-studio-sdk's
    converter); return images."""
    tasks, count = _write_images(reader, out, where)
    try:
        _converter(reader).convert_to_yolo(str(tasks), str(out), output_image_dir=str(out / "images"), is_dir=False)
    finally:
        tasks.unlink(missing_ok=True)
    return count


class NoMedia(UsageError):
    """An export asks for media the project does not have stored."""


MEDIA_CHOICES = ("auto", "inline", "ref", "none")


def export_media(store: ProjectStore, ds: lance.LanceDataset, path: Path, fmt: str, *, media: str = "auto",
                 where: str | None = None, regions: bool = False) -> int | None:
    """Write a version with its media, or return ``None`` when the export has no media to join
    (``media="none"``, ``regions``, or ``auto`` for a project without stored media).

    Args:
        fmt: ``hf`` (``Image()``/``Audio()`` columns), ``parquet`` (``media``: ``inline`` bytes, or
            ``ref``/``auto`` sha256 and MIME only), ``coco`` or ``yolo`` (images + labels).

    Raises:
        NoMedia: ``coco``/``yolo``, or ``inline``/``ref``, for a project with no stored media, or
            a label config without a media key.
    """
    if fmt not in ("coco", "yolo") and (media == "none" or regions):
        return None
    reader = MediaReader(store, ds)
    if reader.refs_ref is None or not reader.keys:
        if fmt in ("coco", "yolo") or media in ("inline", "ref"):
            raise NoMedia(f"project {store.project_id} has no stored media for this version; set media.enabled: true "
                          "in the config and run `ls-space-sync sync` (docs/media.md)")
        return None
    if fmt == "hf":
        dataset = to_hf_dataset(reader, where=where)
        dataset.save_to_disk(str(path))
        return int(dataset.num_rows)
    if fmt == "parquet":
        return write_parquet(reader, path, where=where, inline=media == "inline")
    if fmt == "coco":
        return write_coco(reader, path, where=where)
    if fmt == "yolo":
        return write_yolo(reader, path, where=where)
    return None
