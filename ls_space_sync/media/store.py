"""A project's media: two Lance datasets beside its task dataset (``ProjectStore.sibling_uri``).

``project-<id>.media.lance``, the **blobs**: one row per distinct file content, keyed by sha256
(the same bytes in two tasks, or under two URLs, are stored once), append-only:

=========  ===================  ===============================================================
column     Arrow type           meaning
=========  ===================  ===============================================================
sha256     string               hex digest of the bytes (the key)
size       int64                bytes
mime       string               the server's Content-Type, else guessed from the URL's suffix
width      int32                image width in pixels (Pillow), null for other media
height     int32                image height in pixels, null for other media
url        string               the URL it was first fetched from
run_id     string               the sync run that stored it
blob       large_binary         the bytes, Lance blob encoding (``lance-encoding:blob``): stored
                                out of line, read as files with ``take_blobs``, never loaded by a scan
=========  ===================  ===============================================================

``project-<id>.media-refs.lance``, the **refs**: the URL -> sha256 mapping, one row per URL
(primary key ``url``; ``sha256`` null while a URL has never been fetched), with the last fetch's
outcome (``status`` ``stored`` or ``failed``, ``reason``, ``http_status``, ``tried_at``,
``attempts``) and the ``task_id`` that referenced it. A sync run that changes the mapping commits
one refs version (``merge_insert`` by url, run_id in its properties), and every run that tags a
task version tags the refs' latest version with the same name. So ``refs@run-000042`` maps each
URL to the bytes the run fetched, and blobs are never deleted: a tag reads the exact bytes its
tasks referenced then, whatever happened to the file in Label Studio since.

Order within a run (under the project's lock): blobs append, refs commit, task commit, tags. A
crash between any two leaves blobs no tag reads yet (the next run finds their sha256 and does not
store them again) or an untagged refs version (the next run commits over it); never a tag that
reads missing bytes.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator

import lance
import pyarrow as pa

from ls_space_sync.media.fetch import Failed, Fetched
from ls_space_sync.store.dataset import PROP_PREFIX, ProjectStore, StoreError

log = logging.getLogger(__name__)

BLOB_SCHEMA = pa.schema([
    pa.field("sha256", pa.string(), nullable=False),
    pa.field("size", pa.int64()),
    pa.field("mime", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("url", pa.string()),
    pa.field("run_id", pa.string()),
    pa.field("blob", pa.large_binary(), metadata={"lance-encoding:blob": "true"}),
])
REF_SCHEMA = pa.schema([
    pa.field("url", pa.string(), nullable=False),
    pa.field("sha256", pa.string()),
    pa.field("status", pa.string()),
    pa.field("reason", pa.string()),
    pa.field("http_status", pa.int32()),
    pa.field("task_id", pa.int64()),
    pa.field("attempts", pa.int64()),
    pa.field("tried_at", pa.timestamp("us", tz="UTC")),
    pa.field("run_id", pa.string()),
])
STORED, FAILED = "stored", "failed"


class MediaStore:
    """The media datasets of one project (see the module docstring).

    Args:
        store: the project's task store; the media datasets live at its ``sibling_uri`` and open
            with its ``storage_options``.
    """

    def __init__(self, store: ProjectStore):
        self.store = store
        self.blobs_uri = store.sibling_uri("media")
        self.refs_uri = store.sibling_uri("media-refs")

    def _open(self, uri: str, version: int | str | None = None) -> lance.LanceDataset | None:
        try:
            return lance.dataset(uri, version=version, storage_options=self.store.storage_options)
        except (ValueError, OSError):
            if version is not None and self._open(uri) is not None:
                raise StoreError(f"project {self.store.project_id}: the media refs have no version or tag {version!r}")
            return None

    def blobs(self) -> lance.LanceDataset | None:
        """The blobs dataset (latest), or ``None`` before the first file was stored."""
        return self._open(self.blobs_uri)

    def refs(self, version: int | str | None = None) -> lance.LanceDataset | None:
        """The refs dataset at a version or tag (latest by default), or ``None`` if none was written."""
        return self._open(self.refs_uri, version)

    # --- writes (the caller holds the project's lock) ---------------------------------------

    def stored_shas(self, shas: Iterable[str]) -> set[str]:
        """Which of these sha256 digests the blobs dataset holds."""
        wanted = sorted(set(shas))
        ds = self.blobs()
        if ds is None or not wanted:
            return set()
        found: set[str] = set()
        for start in range(0, len(wanted), 500):
            chunk = ", ".join(f"'{s}'" for s in wanted[start:start + 500] if all(c in "0123456789abcdef" for c in s))
            table = ds.to_table(columns=["sha256"], filter=f"sha256 IN ({chunk})")
            found.update(table.column("sha256").to_pylist())
        return found

    def all_shas(self) -> set[str]:
        """Every stored sha256 (one column scan: about 64 bytes a file)."""
        ds = self.blobs()
        return set() if ds is None else set(ds.to_table(columns=["sha256"]).column("sha256").to_pylist())

    @staticmethod
    def blob_batch(files: list[Fetched], run_id: str) -> pa.RecordBatch:
        """Rows of :data:`BLOB_SCHEMA` for downloaded files.

        The arrays come from the system allocator, not pyarrow's default (mimalloc in the Linux
        wheels), which keeps the freed buffers of every written batch: a first sync of 20,000 images
        peaked at 487-513 MB with it and 287 MB with the system pool (bench/media.py's child,
        2026-12-01, docs/media.md).
        """
        pool = pa.system_memory_pool()
        return pa.record_batch([
            pa.array([f.sha256 for f in files], memory_pool=pool),
            pa.array([f.size for f in files], pa.int64(), memory_pool=pool),
            pa.array([f.mime for f in files], memory_pool=pool),
            pa.array([f.width for f in files], pa.int32(), memory_pool=pool),
            pa.array([f.height for f in files], pa.int32(), memory_pool=pool),
            pa.array([f.url for f in files], memory_pool=pool), pa.array([run_id] * len(files), memory_pool=pool),
            pa.array([f.read() for f in files], pa.large_binary(), memory_pool=pool),
        ], schema=BLOB_SCHEMA)

    def append_blobs(self, batches: Iterator[pa.RecordBatch], run_id: str) -> int:
        """Append batches of new blobs as one Lance version (none if ``batches`` is empty); return rows.

        The batches are pulled as Lance writes, so the caller can produce them while downloads go
        on; memory holds the batches Lance has not written yet, not the run's files. The caller
        leaves out sha256 digests that are stored already (:meth:`all_shas`).
        """
        first = next(batches, None)
        if first is None:
            return 0
        count = 0

        def counted() -> Iterator[pa.RecordBatch]:
            nonlocal count
            for batch in itertools.chain([first], batches):
                count += batch.num_rows
                yield batch

        reader = pa.RecordBatchReader.from_batches(BLOB_SCHEMA, counted())
        mode = "append" if self.blobs() is not None else "create"
        lance.write_dataset(reader, self.blobs_uri, schema=BLOB_SCHEMA, mode=mode,
                            storage_options=self.store.storage_options,
                            transaction_properties={PROP_PREFIX + "run_id": run_id})
        return count

    def add_blobs(self, files: list[Fetched], run_id: str) -> int:
        """Append the files whose sha256 is not stored yet (one Lance version); return how many."""
        known = self.stored_shas(f.sha256 for f in files)
        new: dict[str, Fetched] = {}
        for f in files:
            if f.sha256 not in known:
                new.setdefault(f.sha256, f)
        return self.append_blobs(iter([self.blob_batch(list(new.values()), run_id)] if new else []), run_id)

    def commit_refs(self, results: list[tuple[int, Fetched | Failed]], run_id: str) -> int | None:
        """Record each URL's outcome as one refs version; return it, or ``None`` if nothing changed.

        A failure never replaces a stored sha256: a tag keeps reading the bytes last fetched (the
        row's ``status``/``reason`` says the latest attempt failed). A URL whose sha256, status
        and reason are as stored is left alone, so a run that fetched the same bytes again commits
        nothing.
        """
        if not results:
            return None
        now = datetime.now(timezone.utc)
        old = self.ref_rows(r.url for _, r in results)
        rows: dict[str, dict[str, Any]] = {}
        for task_id, res in results:
            prev = old.get(res.url, {})
            row: dict[str, Any]
            if isinstance(res, Fetched):
                row = {"sha256": res.sha256, "status": STORED, "reason": None, "http_status": None}
            else:
                row = {"sha256": prev.get("sha256"), "status": FAILED, "reason": res.reason, "http_status": res.status}
            if prev and all(prev.get(k) == v for k, v in row.items()):
                continue
            row.update(url=res.url, task_id=task_id, attempts=int(prev.get("attempts") or 0) + 1, tried_at=now,
                       run_id=run_id)
            rows[res.url] = row
        if not rows:
            return None
        table = pa.Table.from_pylist(list(rows.values()), schema=REF_SCHEMA)
        props = {PROP_PREFIX + "run_id": run_id}
        ds = self.refs()
        if ds is None:
            return int(lance.write_dataset(table, self.refs_uri, schema=REF_SCHEMA, mode="create",
                                           storage_options=self.store.storage_options,
                                           transaction_properties=props).version)
        txn, _ = ds.merge_insert("url").when_matched_update_all().when_not_matched_insert_all().execute_uncommitted(table)
        txn = dataclasses.replace(txn, transaction_properties=props)
        return int(lance.LanceDataset.commit(self.refs_uri, txn, read_version=ds.version,
                                             storage_options=self.store.storage_options).version)

    def tag(self, name: str) -> None:
        """Tag the refs' latest version ``name`` (a no-op without refs, or if the tag is there already)."""
        ds = self.refs()
        if ds is None:
            return
        try:
            ds.tags.create(name, ds.version)
        except ValueError:
            if ds.tags.get_version(name) != ds.version:
                log.warning("project %s: media refs tag %s already names version %s, not %s", self.store.project_id,
                            name, ds.tags.get_version(name), ds.version)

    # --- reads ------------------------------------------------------------------------------

    def ref_rows(self, urls: Iterable[str] | None = None, version: int | str | None = None) -> dict[str, dict[str, Any]]:
        """``{url: ref row}`` at a refs version or tag (latest by default); only ``urls`` if given."""
        ds = self.refs(version)
        if ds is None:
            return {}
        wanted = None if urls is None else sorted(set(urls))
        if wanted is not None and not wanted:
            return {}
        out: dict[str, dict[str, Any]] = {}
        chunks = [None] if wanted is None else [wanted[i:i + 500] for i in range(0, len(wanted), 500)]
        for chunk in chunks:
            where = None if chunk is None else "url IN (" + ", ".join(_sql_str(u) for u in chunk) + ")"
            for row in ds.to_table(filter=where).to_pylist():
                out[row["url"]] = row
        return out

    def failed(self) -> list[dict[str, Any]]:
        """Ref rows whose latest fetch failed (the latest refs version), by URL; reads only those rows."""
        ds = self.refs()
        if ds is None:
            return []
        return sorted(ds.to_table(filter=f"status = '{FAILED}'").to_pylist(), key=lambda r: r["url"])

    def blob_info(self, shas: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """``{sha256: {size, mime, width, height, url, _rowid}}`` of stored blobs (no bytes read)."""
        ds = self.blobs()
        if ds is None:
            return {}
        cols = ["sha256", "size", "mime", "width", "height", "url"]
        wanted = None if shas is None else sorted(set(shas))
        out: dict[str, dict[str, Any]] = {}
        chunks = [None] if wanted is None else [wanted[i:i + 500] for i in range(0, len(wanted), 500)]
        for chunk in chunks:
            if chunk is not None and not chunk:
                continue
            where = None if chunk is None else "sha256 IN (" + ", ".join(_sql_str(s) for s in chunk) + ")"
            for row in ds.to_table(columns=cols, filter=where, with_row_id=True).to_pylist():
                out[row["sha256"]] = row
        return out

    def read_bytes(self, shas: list[str]) -> dict[str, bytes]:
        """The bytes of stored blobs by sha256 (``take_blobs``: only these files are read)."""
        info = self.blob_info(shas)
        ds = self.blobs()
        if ds is None or not info:
            return {}
        order = [s for s in dict.fromkeys(shas) if s in info]
        files = ds.take_blobs("blob", ids=[info[s]["_rowid"] for s in order])
        out = {}
        for sha, f in zip(order, files):
            if f is not None:
                with f:
                    out[sha] = f.readall()
        return out

    def mapping(self, tag_or_version: int | str | None = None) -> dict[str, str]:
        """``{url: sha256}`` of every stored URL at a refs tag/version (latest by default)."""
        return {u: r["sha256"] for u, r in self.ref_rows(version=tag_or_version).items() if r["sha256"]}

    def refs_version_of_run(self, run_id: str, recent: int = 50) -> int | None:
        """The refs version a run committed (its ``run_id`` property), looking at the last ``recent``."""
        ds = self.refs()
        if ds is None:
            return None
        for v in range(ds.version, max(0, ds.version - recent), -1):
            try:
                txn = ds.read_transaction(v)
            except (ValueError, OSError):
                continue
            props = (txn.transaction_properties if txn else None) or {}
            if props.get(PROP_PREFIX + "run_id") == run_id:
                return v
        return None


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"

