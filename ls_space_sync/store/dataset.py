"""The versioned dataset: one Lance dataset per Label Studio project.

Each sync run that changes something commits exactly one Lance version (inserts, updates and
deletes together, through ``merge_insert`` with ``when_not_matched_by_source_delete``), stamped
with the run's properties (``run_id``, the cursor it reached, the label config) in the version's
transaction, then tagged. Lance commits are atomic: a process killed mid-run leaves the dataset at
its last version. Two writers on one dataset = last writer wins, so callers hold
:func:`project_lock` around every write.

Rows are staged on disk (Arrow IPC, read back batch by batch) while pages arrive, so a sync holds
one page of tasks in memory, not the project.

The store root is a local folder (a ``Path``) or an object-store location
(:class:`ls_space_sync.settings.StoreRoot`, ``s3://bucket/prefix``): Lance reads and writes both,
given the root's storage options. Staging files and the file locks always stay on local disk
(:func:`local_dir`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import json
import re
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence, Union
from urllib.parse import urlsplit

import lance
import pyarrow as pa
import pyarrow.compute as pc
from filelock import FileLock, Timeout
from lance.file import LanceFileSession

from ls_space_sync.errors import LsSpaceSyncError, Retriable, Terminal, UsageError
from ls_space_sync.model.changes import Stamp
from ls_space_sync.model.records import STAMP_COLUMNS
from ls_space_sync.model.refs import Ref, parse_time
from ls_space_sync.settings import StoreRoot

# A store root as callers hold it: a local folder, or an object-store location.
Root = Union[Path, str, StoreRoot]

PROP_PREFIX = "ls_space_sync."
# Column data Lance's writer buffers before it writes pages, across all columns. Its default is
# 8 MiB per top-level column (about 160 MiB for a task row's 20 columns), which a first sync fills
# somewhere past 10,000 tasks: measured on 100,000 bench-shaped tasks, the write grew RSS by 135 MB
# (61 MB at 10,000); with 32 MiB it grew by 70 MB (49 MB at 10,000), 32 s vs 37 s, and the file was
# 43 MB instead of 41 MB. Smaller budgets cost more disk (4 MiB: 73 MB file), as pages get small.
WRITE_BUFFER_BYTES = 32 << 20


class StoreError(LsSpaceSyncError):
    """A dataset, version or tag that does not exist, or a write that cannot proceed."""


class ProjectLocked(StoreError, Retriable):
    """Another process or thread is writing this project's dataset."""


class StoreAccessError(StoreError, Terminal):
    """An object store that refuses us: no credentials, wrong credentials, no such bucket."""

    exit_code = 2


class StoreUnreachable(StoreError, Retriable):
    """An object store that does not answer (down, wrong endpoint); the same call may work later."""


class BadFilter(UsageError, ValueError):
    """A ``--where`` predicate that Lance cannot read against the dataset's columns."""


_RUST_SOURCE = re.compile(r",\s*/\S+\.rs:\d+:\d+")
_INTERNAL_COLUMNS = re.compile(r",?\s*_row(id|addr|offset|_last_updated_at_version|_created_at_version)\b")


def check_filter(ds: lance.LanceDataset, where: str | None) -> None:
    """Plan a scan with the SQL predicate ``where`` (nothing is read) and raise if Lance rejects it.

    Raises:
        BadFilter: one line with what Lance found wrong (its own words, without its Rust source
            locations or internal row columns) and the dataset's columns.
    """
    if not where:
        return
    try:
        ds.scanner(columns=[ds.schema.names[0]], filter=where).explain_plan()
    except (ValueError, OSError) as exc:
        reason = _RUST_SOURCE.sub("", str(exc)).replace("Invalid user input: ", "")
        reason = _INTERNAL_COLUMNS.sub("", reason).strip().rstrip(".")
        raise BadFilter(
            f"the filter {where!r} does not work on this dataset ({reason[:300]}); write a SQL predicate over "
            f"the columns {', '.join(ds.schema.names)}, e.g. \"is_labeled AND total_annotations > 1\""
        ) from None


_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


def local_dir(root: Root) -> Path:
    """The local folder of a store root's staging files and locks: the root itself for a folder,
    ``StoreRoot.local_dir`` (the ``staging_dir`` setting) for an object store."""
    return root.local_dir if isinstance(root, StoreRoot) else Path(root)


def is_local(root: Root) -> bool:
    """Whether the store root is a local folder (not an object store)."""
    return not isinstance(root, StoreRoot)


@contextmanager
def project_lock(root: Root, project_id: int) -> Iterator[None]:
    """Hold the one-writer lock of a project's dataset, or raise :class:`ProjectLocked` at once.

    An OS file lock (``<local_dir(root)>/project-<id>.lock``, fcntl on POSIX) that the kernel
    releases when its holder dies, so a crashed sync never blocks the next one; plus a thread lock,
    because file locks do not exclude threads of the same process. For an object-store root the
    lock file is in the local ``staging_dir``: it excludes writers on this host only.
    """
    folder = local_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    path = str(folder / f"project-{project_id}.lock")
    with _thread_locks_guard:
        tlock = _thread_locks.setdefault(path, threading.Lock())
    if not tlock.acquire(blocking=False):
        raise ProjectLocked(f"project {project_id} is already being synced in this process; wait for that run")
    try:
        flock = FileLock(path, timeout=0, is_singleton=False, thread_local=False)
        try:
            flock.acquire()
        except Timeout:
            raise ProjectLocked(
                f"project {project_id} is being synced by another process (lock {path}); "
                "wait for it to finish, or stop the other ls-space-sync"
            ) from None
        try:
            yield
        finally:
            flock.release()
    finally:
        tlock.release()


class Staging:
    """Rows of one run, written page by page to an Arrow IPC file, read back a batch at a time."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path = path
        self.schema = schema
        self.rows = 0
        self._sink: Any = None
        self._writer: pa.ipc.RecordBatchFileWriter | None = None

    def write(self, table: pa.Table) -> None:
        """Append rows (a table of :attr:`schema`)."""
        if table.num_rows == 0:
            return
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._sink = pa.OSFile(str(self.path), "wb")
            self._writer = pa.ipc.new_file(self._sink, self.schema)
        self._writer.write_table(table.cast(self.schema))
        self.rows += table.num_rows

    def reader(self) -> pa.RecordBatchReader:
        """Close the file and return a reader over all staged rows (empty if none)."""
        self._finish()
        if self.rows == 0:
            return pa.RecordBatchReader.from_batches(self.schema, iter(()))
        # Read, not memory-mapped: mapped pages of the whole file would count in the RSS of a large sync.
        source = pa.ipc.open_file(pa.OSFile(str(self.path), "rb"))
        batches = (source.get_batch(i) for i in range(source.num_record_batches))
        return pa.RecordBatchReader.from_batches(self.schema, batches)

    def _finish(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = None

    def discard(self) -> None:
        """Delete the staging file."""
        self._finish()
        self.path.unlink(missing_ok=True)


def version_time(value: int | datetime) -> datetime:
    """Turn a ``timestamp`` of ``LanceDataset.versions()`` into an aware UTC datetime.

    Args:
        value: what pylance gives: a naive local time (``datetime.fromtimestamp``), or the raw
            nanoseconds since the epoch (UTC) its ``Version`` type also allows.
    """
    if isinstance(value, int):
        return datetime.fromtimestamp(value / 1e9, tz=timezone.utc)
    return value.astimezone(timezone.utc)




def _join(root: Path | StoreRoot, name: str) -> str:
    return root.join(name) if isinstance(root, StoreRoot) else str(root / name)


def _store_errors(root: StoreRoot, exc: Exception) -> StoreError:
    """Lance's error on an object store as one line naming the fix (never the storage options)."""
    text = str(exc)
    bucket = urlsplit(root.uri).netloc
    creds = {"s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or run with an instance role)",
             "gs": "GOOGLE_APPLICATION_CREDENTIALS (a service account key file)"}.get(
        root.scheme, "AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY")
    if "credential" in text.lower() and ("failed to" in text.lower() or "no " in text.lower()):
        return StoreAccessError(f"no credentials for the store {root.uri}: set {creds} in the environment "
                                "of ls-space-sync")
    if "NoSuchBucket" in text:
        return StoreAccessError(f"the bucket {bucket} of store_root {root.uri} does not exist; create it "
                                "or fix store_root (and storage_options.aws_endpoint for an S3-compatible server)")
    if any(code in text for code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403 Forbidden")):
        return StoreAccessError(f"the object store refused the credentials for {root.uri}; check {creds}")
    if "error sending request" in text or "Connection refused" in text or "dns error" in text:
        endpoint = root.storage_options.get("aws_endpoint") or root.storage_options.get("endpoint") or "its default endpoint"
        return StoreUnreachable(f"cannot reach the object store of {root.uri} at {endpoint}; check that it is up "
                                "and storage_options (aws_endpoint, allow_http for http://)")
    return StoreError(f"the store {root.uri} failed: {_RUST_SOURCE.sub('', text).splitlines()[0][:300]}")


def _session(root: StoreRoot) -> LanceFileSession:
    return LanceFileSession(root.uri, storage_options=root.storage_options)


# One Lance session per object-store root and process: it keeps the object store's client and the
# manifests read, so opening a dataset again costs about half (measured on SeaweedFS on loopback:
# 25 ms instead of 52 ms). Bounded: a daemon opens datasets for days.
_lance_sessions: dict[str, lance.Session] = {}
_lance_sessions_guard = threading.Lock()
SESSION_METADATA_CACHE_BYTES = 64 << 20
SESSION_INDEX_CACHE_BYTES = 16 << 20


def _lance_session(root: Path | StoreRoot) -> lance.Session | None:
    if not isinstance(root, StoreRoot):
        return None  # a local folder: Lance's own per-open default, as always
    with _lance_sessions_guard:
        if root.uri not in _lance_sessions:
            _lance_sessions[root.uri] = lance.Session(index_cache_size_bytes=SESSION_INDEX_CACHE_BYTES,
                                                      metadata_cache_size_bytes=SESSION_METADATA_CACHE_BYTES)
        return _lance_sessions[root.uri]


class ProjectStore:
    """One project's Lance dataset at ``<root>/project-<id>.lance``.

    Args:
        root: the store root (``Settings.resolved_store_root``): a folder, or an object-store
            :class:`ls_space_sync.settings.StoreRoot` whose storage options every Lance call gets.
        project_id: the Label Studio project id.
    """

    def __init__(self, root: Root, project_id: int):
        self.root: Path | StoreRoot = root if isinstance(root, StoreRoot) else Path(root)
        self.project_id = project_id
        self.uri = _join(self.root, f"project-{project_id}.lance")
        # Passed to every ``lance`` call on this project's datasets (object-store endpoints and
        # credentials); ``None`` for a local folder.
        self.storage_options: dict[str, str] | None = (
            dict(self.root.storage_options) if isinstance(self.root, StoreRoot) else None)
        self._exists = False

    def sibling_uri(self, kind: str) -> str:
        """Where a dataset that belongs to this project lives beside it: ``project-<id>.<kind>.lance``.

        Derived datasets (media blobs, materialized views) open their Lance dataset here, with
        :attr:`storage_options`, so they follow the project's dataset to wherever the store is.
        """
        return _join(self.root, f"project-{self.project_id}.{kind}.lance")

    def exists(self) -> bool:
        """Whether the dataset has been created (by a first sync that found tasks).

        Raises:
            StoreAccessError: an object store without credentials or bucket (one line, the fix).
            StoreUnreachable: an object store that does not answer.
        """
        if not isinstance(self.root, StoreRoot):
            return (Path(self.uri) / "_versions").exists()
        if self._exists:  # a dataset is never removed by this package: one LIST request per store object
            return True
        try:
            listing = _session(self.root).list_with_delimiter(f"{self.uri[len(self.root.uri) + 1:]}/_versions")
        except (OSError, RuntimeError, ValueError) as exc:
            raise _store_errors(self.root, exc) from None
        self._exists = bool(listing.objects)
        return self._exists

    def _open(self, version: int | str | None = None) -> lance.LanceDataset:
        return lance.dataset(self.uri, version=version, storage_options=self.storage_options,
                             session=_lance_session(self.root))

    def dataset(
        self, version: int | str | None = None, *, as_of: datetime | str | None = None
    ) -> lance.LanceDataset:
        """Open the dataset at a version number, a tag name, or as of a UTC time (latest by default).

        Raises:
            StoreError: no dataset yet, or no such version/tag, or nothing committed by that time.
        """
        if not self.exists():
            raise StoreError(f"project {self.project_id} has no dataset yet at {self.uri}; run `ls-space-sync sync` first")
        if isinstance(version, str) and version.isdigit():
            version = int(version)
        if as_of is not None:
            when = parse_time(as_of)
            ds = self._open()
            candidates = [v["version"] for v in ds.versions() if version_time(v["timestamp"]) <= when]
            if not candidates:
                raise StoreError(f"project {self.project_id} had no version at {when.isoformat()}")
            version = max(candidates)
        try:
            return self._open(version)
        except (ValueError, OSError) as exc:
            known = ", ".join(sorted(self.tags())[-5:]) or "none"
            raise StoreError(
                f"project {self.project_id} has no version or tag {version!r} (latest tags: {known}); "
                "list them with `ls-space-sync tags`"
            ) from exc

    def at(self, ref: Ref) -> lance.LanceDataset:
        """Open the dataset at a :class:`ls_space_sync.model.refs.Ref` (see :meth:`dataset`)."""
        return self.dataset(**ref.dataset_args())

    def schema(self) -> pa.Schema | None:
        """The dataset's Arrow schema, or ``None`` before the first commit."""
        return self.dataset().schema if self.exists() else None

    def version(self) -> int | None:
        """The latest version number, or ``None`` before the first commit."""
        return self.dataset().version if self.exists() else None

    def count(self) -> int:
        """Number of tasks in the latest version."""
        return self.dataset().count_rows() if self.exists() else 0

    def stamps(self, ids: Sequence[int] | None = None) -> dict[int, Stamp]:
        """Stamps of stored tasks, by id (see :mod:`ls_space_sync.changes`); reads six columns.

        Args:
            ids: only these task ids (a page being classified); ``None`` for every stored task.
        """
        if not self.exists() or (ids is not None and not ids):
            return {}
        where = None if ids is None else f"id IN ({', '.join(str(int(i)) for i in ids)})"
        table = self.dataset().to_table(columns=STAMP_COLUMNS, filter=where)
        cols = []
        for name in STAMP_COLUMNS:
            col = table.column(name)
            if pa.types.is_timestamp(col.type):
                col = pc.cast(col.cast(pa.timestamp("us", tz="UTC")), pa.int64())
            cols.append(col.fill_null(0).to_numpy().tolist())
        return {row[0]: tuple(row[1:]) for row in zip(*cols)}

    def commit(
        self, rows: pa.RecordBatchReader, deletes: Sequence[int], properties: dict[str, str]
    ) -> tuple[int, dict[str, int]] | None:
        """Write staged rows (upserts by ``id``) and hard deletes as exactly one new version.

        Args:
            rows: new rows; a row whose ``id`` is stored replaces it.
            deletes: task ids to remove.
            properties: stored with the version's transaction, keys prefixed ``ls_space_sync.``.

        Returns:
            ``(version, {"num_inserted_rows", "num_updated_rows", "num_deleted_rows"})``, or ``None``
            if there was nothing to write (no version is committed then).
        """
        props = {PROP_PREFIX + k: v for k, v in properties.items()}
        if not self.exists():
            batches = iter(rows)
            first = next((b for b in batches if b.num_rows), None)
            if first is None:
                # A project with no tasks: no dataset rather than an empty first version.
                return None
            if isinstance(self.root, Path):
                self.root.mkdir(parents=True, exist_ok=True)
            ds = lance.write_dataset(pa.RecordBatchReader.from_batches(rows.schema, itertools.chain([first], batches)),
                                     self.uri, schema=rows.schema, mode="create", transaction_properties=props,
                                     data_cache_bytes=WRITE_BUFFER_BYTES, storage_options=self.storage_options)
            return ds.version, {"num_inserted_rows": ds.count_rows(), "num_updated_rows": 0, "num_deleted_rows": 0}
        ds = self.dataset()
        builder = ds.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
        if deletes:
            builder = builder.when_not_matched_by_source_delete(f"id IN ({', '.join(str(int(i)) for i in deletes)})")
        txn, stats = builder.execute_uncommitted(rows)
        if not any(stats.values()):
            return None
        txn = dataclasses.replace(txn, transaction_properties=props)
        # The opened dataset as the base: its object store and session (the URI's options are its own).
        new = lance.LanceDataset.commit(ds, txn, read_version=ds.version, storage_options=self.storage_options)
        return new.version, stats

    def properties(self, version: int) -> dict[str, str]:
        """The ``ls_space_sync.*`` properties a run stored with ``version`` (prefix removed; ``{}`` if none)."""
        txn = self.dataset().read_transaction(version)
        props = (txn.transaction_properties if txn else None) or {}
        return {k[len(PROP_PREFIX):]: v for k, v in props.items() if k.startswith(PROP_PREFIX)}

    def find_run(self, run_id: str, recent: int = 50) -> int | None:
        """Return the version a run committed, looking at the last ``recent`` versions, or ``None``."""
        if not self.exists():
            return None
        ds = self.dataset()
        for v in range(ds.version, max(0, ds.version - recent), -1):
            if self.properties(v).get("run_id") == run_id:
                return v
        return None

    def label_config(self, version: int | str | None = None) -> str | None:
        """The project's label config as it was when ``version`` (default latest) was pulled."""
        ds = self.dataset(version)
        # Only versions that still exist: compaction commits versions without properties and
        # removes old untagged ones, so the walk must step over gaps.
        for v in sorted((x["version"] for x in ds.versions() if x["version"] <= ds.version), reverse=True):
            try:
                cfg = self.properties(v).get("label_config")
            except (ValueError, OSError):
                continue
            if cfg:
                return cfg
        return None

    def tag(self, name: str, version: int) -> None:
        """Tag ``version`` as ``name``; a no-op if the tag already points there.

        Creates first and looks only on a conflict: listing every tag first costs ~0.1 s per run
        at 1,000 tags (bench/store.py).

        Raises:
            StoreError: the tag exists and names another version.
        """
        ds = self.dataset()
        try:
            ds.tags.create(name, version)
        except ValueError:
            existing = ds.tags.get_version(name)
            if existing != version:
                raise StoreError(f"tag {name} already names version {existing}, not {version}") from None

    def tags(self) -> dict[str, int]:
        """All tags, ``{name: version}``."""
        if not self.exists():
            return {}
        return {name: t["version"] for name, t in self.dataset().tags.list().items()}

    def versions(self) -> list[dict[str, Any]]:
        """Every version, oldest first; ``[]`` before the first commit.

        Returns:
            ``[{"version": int, "timestamp": aware UTC datetime of the commit, "rows": int, "tags":
            [names], "run_id": str | None, "counts": {"inserted", "updated", "deleted"} | None}]``
            (``run_id`` and ``counts`` are the commit properties a sync run writes).
        """
        if not self.exists():
            return []
        by_version: dict[int, list[str]] = {}
        for name, tagged in self.tags().items():
            by_version.setdefault(tagged, []).append(name)
        out = []
        for v in self.dataset().versions():
            props = {}
            try:
                props = self.properties(v["version"])
            except (ValueError, OSError):
                pass
            out.append(
                {
                    "version": v["version"],
                    "timestamp": version_time(v["timestamp"]),
                    "rows": int(v["metadata"].get("total_rows", 0)),
                    "tags": sorted(by_version.get(v["version"], [])),
                    "run_id": props.get("run_id"),
                    "counts": json.loads(props["counts"]) if "counts" in props else None,
                }
            )
        return out


def dataset_names(root: Root, pattern: str = "project-*.lance") -> list[str]:
    """Names of the entries right under the store root that match a glob ``pattern``, sorted.

    A folder is globbed; an object store is listed one level deep with Lance's own client
    (``LanceFileSession.list_with_delimiter``), the same storage options as the datasets.

    Raises:
        StoreAccessError, StoreUnreachable: an object store that refuses us or does not answer.
    """
    if isinstance(root, StoreRoot):
        try:
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in _session(root).list_with_delimiter().common_prefixes]
        except (OSError, RuntimeError, ValueError) as exc:
            raise _store_errors(root, exc) from None
        return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))
    return sorted(path.name for path in Path(root).glob(pattern))


def stored_projects(root: Root) -> list[int]:
    """Ids of the projects that have a dataset under the store root.

    A folder is globbed; an object store is listed one level deep with Lance's own client
    (``LanceFileSession.list_with_delimiter``: the same storage options and credentials as the
    datasets, no second S3/GCS/Azure client to configure).

    Raises:
        StoreAccessError, StoreUnreachable: an object store that refuses us or does not answer.
    """
    out = []
    for name in dataset_names(root):
        suffix = name[len("project-"):-len(".lance")] if name.startswith("project-") and name.endswith(".lance") else ""
        if suffix.isdigit() and ProjectStore(root, int(suffix)).exists():
            out.append(int(suffix))
    return sorted(out)
