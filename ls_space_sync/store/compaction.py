"""Compaction: merge small files, prune run tags by policy, remove old untagged versions.

Each sync run adds a small data file (its changed tasks) and a deletion file, so a dataset read
after hundreds of runs opens hundreds of fragments. :func:`compact_project`, under the project's
write lock:

1. prunes ``run-NNNNNN`` tags by policy (other tags, e.g. ``release-1``, are never touched; the
   newest run tag always stays). A run tag is kept if it is among the newest ``keep_tags_count``
   *or* younger than ``keep_tags_days`` (each keep rule that is set can save a tag, as in restic's
   ``--keep-last``/``--keep-within``); with neither set no tag is pruned;
2. merges the latest version's small fragments (fewer than :data:`TARGET_ROWS_PER_FRAGMENT` rows,
   e.g. one per sync run) into few larger files, and rewrites a large fragment once half its rows
   are deleted (``optimize.compact_files``, which commits one new version with the same rows);
3. removes untagged versions older than ``retention_seconds`` (``cleanup_old_versions``). Lance
   keeps every tagged version and the files it reads; before removing anything the files that
   cleanup would delete are checked against the files of every tagged version, and the run is
   refused if any would go. After cleanup each tag is opened again and its row count compared.

Disk use (bytes and files under the dataset folder) is measured before and after; in an object
store by listing the dataset's prefix (bytes only on S3, through pyarrow's S3 client).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import lance
import pyarrow.fs as pafs
from lance.file import LanceFileSession

from ls_space_sync.settings import Settings, StoreRoot
from ls_space_sync.store.dataset import ProjectStore, StoreError, version_time
from ls_space_sync.store.leases import writer_lock

log = logging.getLogger(__name__)

RUN_TAG = re.compile(r"^run-\d{6}$")
# A fragment with fewer rows is "small" and merged with its small neighbours into fragments of up to
# this many rows. Lance's default (1M rows) would rewrite a project's whole first load at every
# compaction, and tagged versions keep the old copy: double the disk until those tags are pruned.
TARGET_ROWS_PER_FRAGMENT = 20_000
# A larger fragment is rewritten only when this share of its rows is deleted (each task update
# deletes the old row). Lance's default, 10%, would rewrite a first load after a few busy days,
# for the same reason at the same cost.
MATERIALIZE_DELETIONS_THRESHOLD = 0.5
# What a sync run's own merge builds (merge_small_fragments): smaller than the compaction's target,
# so a merged fragment stops being rewritten after a few merges. Each rewrite is a copy that the
# tags of the runs in between keep on disk. 500, not 5,000: with every tag kept, 1,000 runs of 25
# changed tasks on 20,000 took 8.5x the table on disk instead of 12.7x, commit time still within
# its target (bench/store.py, 2026-12-01, commit 22aa0c8; 1,000 rows: 8.7x).
RUN_MERGE_TARGET_ROWS = 500


@dataclass
class CompactionReport:
    """What :func:`compact_project` did to one project's dataset, or in a dry run would do.

    Disk use is of every file under the dataset's folder. A field is ``None`` where the run did not
    measure it: all but ``project``, ``status`` and ``seconds`` without a dataset; the ``*_after``
    fields in a dry run; ``bytes_removed`` outside one.
    """

    project: int  # the Label Studio project id
    status: str  # "compacted", "dry-run" or "no dataset"
    bytes_before: int | None = None  # disk use before, in bytes
    files_before: int | None = None  # files under the folder before
    fragments_before: int | None = None  # fragments of the latest version before
    version_before: int | None = None  # the latest version number before
    tags_pruned: list[str] | None = None  # run tags deleted (a dry run: that would be), oldest first
    bytes_after: int | None = None  # disk use after, in bytes
    files_after: int | None = None
    fragments_after: int | None = None  # fragments of the latest version after (merged)
    version_after: int | None = None  # the latest version after: the merge's own commit
    versions_removed: int | None = None  # versions cleanup removed (a dry run: would remove, tags before pruning)
    bytes_removed: int | None = None  # dry run only: bytes that cleanup would free, tags before pruning
    seconds: float = 0.0  # wall time of the compaction, in seconds

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-able values, leaving out the fields the run did not measure
        (``compact --json`` prints this)."""
        return {key: value for key, value in asdict(self).items() if value is not None}


def disk_usage(path: str | Path) -> tuple[int, int]:
    """Return ``(bytes, files)`` of every file under ``path`` (``(0, 0)`` if it does not exist)."""
    total = files = 0
    for p in Path(path).rglob("*"):
        if p.is_file():
            total += p.stat().st_size
            files += 1
    return total, files


def store_usage(store: ProjectStore) -> tuple[int | None, int]:
    """Return ``(bytes, files)`` of a project's dataset, local or in an object store.

    An object store is listed with Lance's client (the files); bytes are measured on S3 only
    (pyarrow's S3 client, with the same endpoint, region and credentials), else ``None``.
    """
    if not isinstance(store.root, StoreRoot):
        return disk_usage(store.uri)
    files = len(LanceFileSession(store.uri, storage_options=store.storage_options).list())
    if store.root.scheme != "s3":
        return None, files
    return _s3_bytes(store.uri, store.storage_options or {}), files


def _s3_bytes(uri: str, options: dict[str, str]) -> int | None:
    """Bytes under an ``s3://`` prefix, with Lance's storage options mapped to pyarrow's S3 client."""
    opt = {k.lower(): v for k, v in options.items()}
    args: dict[str, Any] = {"allow_bucket_creation": False}
    for ours, theirs in (("aws_endpoint", "endpoint_override"), ("endpoint", "endpoint_override"),
                         ("aws_region", "region"), ("region", "region"), ("aws_access_key_id", "access_key"),
                         ("aws_secret_access_key", "secret_key"), ("aws_session_token", "session_token")):
        if ours in opt:
            args[theirs] = opt[ours]
    try:
        fs = pafs.S3FileSystem(**args)
        infos = fs.get_file_info(pafs.FileSelector(uri[len("s3://"):], recursive=True, allow_not_found=True))
    except (OSError, ValueError) as exc:  # a measurement only: never fail the compaction for it
        log.warning("could not measure the bytes of %s: %s", uri, str(exc).splitlines()[0][:200])
        return None
    return sum(i.size or 0 for i in infos if i.type == pafs.FileType.File)


def tags_to_prune(
    tags: dict[str, int], version_times: dict[int, datetime], *, keep_count: int | None, keep_days: float | None,
    now: datetime,
) -> list[str]:
    """Choose the run tags a policy removes (pure).

    Args:
        tags: ``{name: version}``; only names like ``run-000042`` are candidates.
        version_times: commit time (UTC) of each version.
        keep_count: keep the newest N run tags (``None``: this rule keeps nothing).
        keep_days: keep run tags younger than this many days (``None``: this rule keeps nothing).
        now: the current UTC time.

    Returns:
        Tag names to delete, oldest first. Empty if neither rule is set. The newest run tag is
        always kept.
    """
    if keep_count is None and keep_days is None:
        return []
    runs = sorted((name for name in tags if RUN_TAG.match(name)), key=lambda n: (tags[n], n), reverse=True)
    keep = set(runs[:1])
    if keep_count is not None:
        keep.update(runs[:keep_count])
    if keep_days is not None:
        cutoff = now - timedelta(days=keep_days)
        keep.update(n for n in runs if version_times.get(tags[n], now) >= cutoff)
    return [n for n in reversed(runs) if n not in keep]


def _version_times(ds: lance.LanceDataset) -> dict[int, datetime]:
    return {v["version"]: version_time(v["timestamp"]) for v in ds.versions()}


def _files_of(ds: lance.LanceDataset) -> set[str]:
    """Data and deletion file names a version reads."""
    names: set[str] = set()
    for fragment in ds.get_fragments():
        meta = fragment.metadata
        names.update(Path(f.path).name for f in meta.files)
        if meta.deletion_file is not None:
            names.add(Path(meta.deletion_file.path(fragment.fragment_id)).name)
    return names


def _tag_fingerprints(store: ProjectStore) -> dict[str, tuple[int, int]]:
    """``{tag: (version, rows)}``; raises :class:`StoreError` if a tag cannot be read."""
    out = {}
    for name, version in store.tags().items():
        try:
            out[name] = (version, store.dataset(name).count_rows())
        except (StoreError, OSError, ValueError) as exc:
            raise StoreError(f"tag {name} (version {version}) cannot be read before compaction: {exc}") from exc
    return out


def _check_cleanup_keeps_tags(store: ProjectStore, older_than: timedelta) -> dict[str, Any]:
    """Refuse (raise :class:`StoreError`) if cleanup would delete a file a tagged version reads."""
    ds = store.dataset()
    plan = ds.explain_cleanup_old_versions(
        older_than=older_than, error_if_tagged_old_versions=False, include_files=True, max_files=100_000
    )
    candidates = {Path(str(getattr(f, "path", f))).name for f in plan.candidate_files}
    if plan.candidate_files_truncated:
        raise StoreError("cleanup would remove more than 100000 files; run compaction with a longer retention first")
    for name in store.tags():
        lost = _files_of(store.dataset(name)) & candidates
        if lost:
            raise StoreError(
                f"refusing cleanup: it would delete {len(lost)} file(s) that tag {name} reads "
                f"(e.g. {sorted(lost)[0]}); nothing was removed"
            )
    stats = plan.stats
    return {"versions": stats.old_versions, "bytes": stats.bytes_removed}


def _compact_files(ds: lance.LanceDataset, target_rows: int | None = None) -> Any:
    """Lance's ``compact_files`` with this module's targets (rows: :data:`TARGET_ROWS_PER_FRAGMENT`
    unless given); commits one version with the same rows."""
    return ds.optimize.compact_files(target_rows_per_fragment=target_rows or TARGET_ROWS_PER_FRAGMENT,
                                     materialize_deletions_threshold=MATERIALIZE_DELETIONS_THRESHOLD)


def small_fragments(ds: lance.LanceDataset, under: int | None = None) -> int:
    """How many of the version's fragments hold fewer than ``under`` rows (default
    :data:`TARGET_ROWS_PER_FRAGMENT`).

    Read from the manifest (``physical_rows``, deleted rows included); no data file is opened.
    """
    limit = under or TARGET_ROWS_PER_FRAGMENT
    return sum(1 for f in ds.get_fragments() if f.metadata.physical_rows < limit)


def merge_small_fragments(store: ProjectStore, over: int | None,
                          target_rows: int = RUN_MERGE_TARGET_ROWS) -> dict[str, int] | None:
    """Merge the latest version's small fragments if there are more than ``over`` of them.

    Called by a sync run before its commit, under the project's lock (the caller holds it). Each
    run adds a fragment and Lance's ``merge_insert`` visits every fragment, so without this a
    run's commit grows with the number of runs since the last compaction (measured: 31 ms at
    run 1, 740 ms at run 900 on 20,000 tasks; bench/store.py). The merge is the merge step of
    :func:`compact_project` alone, with the smaller :data:`RUN_MERGE_TARGET_ROWS` (so merged
    fragments stop being rewritten): no tag is pruned and no version removed. It commits one
    untagged version with the same rows, so the run's own version (the next one) stays the
    latest and tagged; a crash between the two leaves the same rows as the last good version.

    Args:
        store: the project's store.
        over: merge when more than this many fragments hold under ``target_rows`` rows; ``None``
            never merges.
        target_rows: merge those into fragments of up to this many rows.

    Returns:
        ``None`` if nothing was merged, else ``{"small_fragments", "fragments_removed",
        "fragments_added", "version"}`` (the merge's version).
    """
    if over is None or not store.exists():
        return None
    ds = store.dataset()
    small = small_fragments(ds, under=target_rows)
    if small <= over:
        return None
    metrics = _compact_files(ds, target_rows)
    version = store.dataset().version
    log.info("project %s: merged %s small fragments into %s (version %s)", store.project_id,
             metrics.fragments_removed, metrics.fragments_added, version)
    return {"small_fragments": small, "fragments_removed": metrics.fragments_removed,
            "fragments_added": metrics.fragments_added, "version": version}


def compact_project(
    settings: Settings,
    project_id: int,
    *,
    retention_seconds: float | None = None,
    keep_tags_count: int | None = None,
    keep_tags_days: float | None = None,
    dry_run: bool = False,
) -> CompactionReport:
    """Compact one project's dataset; see the module docstring for the steps.

    Args:
        settings: the settings; ``settings.compaction`` gives the defaults of the three policies.
        project_id: the Label Studio project id.
        retention_seconds: untagged versions older than this many seconds are removed (default
            from settings).
        keep_tags_count, keep_tags_days: run-tag pruning policy: the newest N, or younger than D
            days (defaults from settings).
        dry_run: only report what would be done; nothing is written or deleted.

    Returns:
        Disk use (bytes, files), fragments and version before and after, the tags pruned and
        versions removed; status ``"no dataset"`` when the project has none yet. A dry run reports
        ``versions_removed``/``bytes_removed`` of a cleanup with the current tags, before pruning.

    Raises:
        ProjectLocked: a sync (or another compaction) holds the project's lock.
        StoreError: a tag cannot be read, or cleanup would remove a file a tag reads (refused).
    """
    policy = settings.compaction
    retention = policy.retention_seconds if retention_seconds is None else retention_seconds
    keep_count = policy.keep_tags_count if keep_tags_count is None else keep_tags_count
    keep_days = policy.keep_tags_days if keep_tags_days is None else keep_tags_days
    root = settings.resolved_store_root
    store = ProjectStore(root, project_id)
    started = time.perf_counter()
    with writer_lock(settings, None, project_id, lock_root=root):
        if not store.exists():
            return CompactionReport(project_id, "no dataset", seconds=0.0)
        bytes_before, files_before = store_usage(store)
        ds = store.dataset()
        report = CompactionReport(
            project_id,
            "dry-run" if dry_run else "compacted",
            bytes_before=bytes_before,
            files_before=files_before,
            fragments_before=len(ds.get_fragments()),
            version_before=ds.version,
        )
        fingerprints = _tag_fingerprints(store)
        prune = tags_to_prune(store.tags(), _version_times(ds), keep_count=keep_count, keep_days=keep_days,
                              now=datetime.now(timezone.utc))
        report.tags_pruned = prune
        older_than = timedelta(seconds=retention)
        if dry_run:
            plan = _check_cleanup_keeps_tags(store, older_than)
            report.versions_removed, report.bytes_removed = plan["versions"], plan["bytes"]
            report.seconds = time.perf_counter() - started
            return report
        for name in prune:
            ds.tags.delete(name)
            fingerprints.pop(name)
        metrics = _compact_files(ds)
        log.info("project %s: compaction removed %s fragments, added %s", project_id,
                 metrics.fragments_removed, metrics.fragments_added)
        _check_cleanup_keeps_tags(store, older_than)
        stats = store.dataset().cleanup_old_versions(older_than=older_than, error_if_tagged_old_versions=False)
        for name, (version, rows) in fingerprints.items():
            after = store.dataset(name)
            if after.version != version or after.count_rows() != rows:
                raise StoreError(f"tag {name} changed during compaction: v{version} {rows} rows -> "
                                 f"v{after.version} {after.count_rows()} rows")
        ds = store.dataset()
        report.bytes_after, report.files_after = store_usage(store)
        report.fragments_after = len(ds.get_fragments())
        report.version_after = ds.version
        report.versions_removed = stats.old_versions
        report.seconds = time.perf_counter() - started
        return report


def summary(report: CompactionReport) -> str:
    """One line for people, e.g. ``project 3: 52 -> 1 fragments, 40 tags pruned, 41 versions removed;
    disk 12.3 MB (310 files) -> 4.5 MB (20 files)``."""
    pid = report.project
    if report.status == "no dataset":
        return f"project {pid}: no dataset yet"
    pruned = report.tags_pruned or []
    span = f" ({pruned[0]}..{pruned[-1]})" if pruned else ""
    if report.status == "dry-run":
        return (f"project {pid} (dry run): {report.fragments_before} fragments; would prune {len(pruned)} tags{span}; "
                f"cleanup would remove {report.versions_removed} versions ({_mb(report.bytes_removed)}) "
                f"before pruning; disk {_mb(report.bytes_before)} ({report.files_before} files)")
    return (f"project {pid}: {report.fragments_before} -> {report.fragments_after} fragments, "
            f"{len(pruned)} tags pruned{span}, {report.versions_removed} versions removed; "
            f"disk {_mb(report.bytes_before)} ({report.files_before} files) -> {_mb(report.bytes_after)} "
            f"({report.files_after} files) in {report.seconds:.1f} s")


def _mb(n: int | None) -> str:
    """A byte count for people: ``812 KB``, ``19.9 MB``, ``1.2 GB`` (``?`` when not measured)."""
    if n is None:
        return "?"
    for unit, size in (("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 1e3:.0f} KB"

