"""The media step of a sync run: collect URLs while pages are staged, fetch and commit before the
task version, tag with it. Called from :mod:`ls_space_sync.pull.run` at three points.

Which URLs a run fetches: every media URL of the run's new or changed tasks (``media.keys`` or the
label config's media tags), and every URL whose last fetch failed (a 404 today may be there
tomorrow). An unchanged project costs no request: no task changed and nothing failed. With
``media.refetch_changed: false`` a changed task's URLs that are stored already are not fetched
again (cheaper, but a file replaced under the same URL keeps its old bytes).
"""

from __future__ import annotations

import contextvars
import dataclasses
import itertools
import logging
import shutil
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa

from ls_space_sync.labelstudio.client import LabelStudioClient
from ls_space_sync.logs import run_context
from ls_space_sync.media.fetch import Failed, Fetched, download
from ls_space_sync.media.keys import is_media_url, media_keys
from ls_space_sync.media.store import STORED, MediaStore
from ls_space_sync.settings import MediaSettings
from ls_space_sync.store.dataset import ProjectStore

log = logging.getLogger(__name__)

# A blob batch: this many files or bytes, whichever comes first (memory per batch in flight).
BATCH_FILES = 32
BATCH_BYTES = 16 << 20


@dataclass
class MediaResult:
    """What the media step of one run did: URLs fetched, new blobs stored, URLs failed, the refs version."""

    fetched: int = 0
    stored: int = 0
    failed: list[Failed] = field(default_factory=list)
    refs_version: int | None = None


class MediaRun:
    """The media step of one sync run of one project.

    Args:
        settings: ``settings.media``.
        client: the run's Label Studio client (connections, token, retry policy, request count).
        store: the project's task store.
        run_id: the run, stamped on what it writes.
        staging_root: the store's staging folder; files go to ``media-p<project>-<run_id>/`` in it.
    """

    def __init__(self, settings: MediaSettings, client: LabelStudioClient, store: ProjectStore, run_id: str,
                 staging_root: Path):
        self.settings, self.client, self.run_id = settings, client, run_id
        self.media = MediaStore(store)
        self.project_id = store.project_id
        # A run killed mid-fetch leaves its folder behind: we hold the project's lock, so any
        # other media folder of this project belongs to a dead run.
        for stale in staging_root.glob(f"media-p{store.project_id}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        self.dir = staging_root / f"media-p{store.project_id}-{run_id}"
        self._seen: dict[str, tuple[int, str]] = {}  # url -> (task id, key), first task that named it

    def collect(self, tasks: Iterable[dict[str, Any]]) -> None:
        """Note the URL-like values of upserted tasks' data (the keys are chosen at :meth:`fetch`,
        once the label config is read)."""
        for task in tasks:
            data = task.get("data")
            if isinstance(data, dict):
                for key, value in data.items():
                    if is_media_url(value):
                        self._seen.setdefault(value.strip(), (int(task["id"]), key))

    def fetch(self, label_config: str) -> MediaResult:
        """Download what this run must fetch, store new blobs and commit the refs (before the task
        version's commit). A failed URL is recorded, never raised: the run goes on."""
        keys = set(media_keys(label_config, self.settings.keys))
        wanted = {url: tid for url, (tid, key) in self._seen.items() if key in keys}
        known = self.media.ref_rows(wanted) if not self.settings.refetch_changed else {}
        wanted = {u: t for u, t in wanted.items() if known.get(u, {}).get("status") != STORED}
        for row in self.media.failed():  # retried on every run until it is stored
            wanted.setdefault(row["url"], int(row["task_id"]))
        result = MediaResult()
        if not wanted:
            return result
        outcomes: list[tuple[int, Fetched | Failed]] = []
        try:
            with ThreadPoolExecutor(max_workers=self.settings.concurrency, thread_name_prefix="ls-media") as pool:
                batches = self._downloaded(pool, list(wanted.items()), outcomes, result)
                result.stored = self.media.append_blobs(batches, self.run_id)
            result.failed = [o for _, o in outcomes if isinstance(o, Failed)]
            result.refs_version = self.media.commit_refs(outcomes, self.run_id)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
        for failure in result.failed[:5]:
            log.warning("project %s: media %s not stored: %s", self.project_id, failure.url[:200], failure.reason)
        if len(result.failed) > 5:
            log.warning("project %s: %d more media URLs not stored (`ls-space-sync media status`)",
                        self.project_id, len(result.failed) - 5)
        log.info("project %s: media fetched %d, new blobs %d, failed %d", self.project_id, result.fetched,
                 result.stored, len(result.failed))
        return result

    def _downloaded(self, pool: ThreadPoolExecutor, items: list[tuple[str, int]],
                    outcomes: list[tuple[int, Fetched | Failed]], result: MediaResult) -> Iterator[pa.RecordBatch]:
        """Download ``items`` on ``pool`` and yield the new files as blob batches, while Lance
        writes the batches before (a pipeline: downloads never wait for the writer). At most
        ``4 * concurrency`` downloads are queued, so the staging disk holds a few files at a time,
        each removed once its bytes are in a batch. Every outcome is appended to ``outcomes``."""
        known = self.media.all_shas()
        queue = iter(items)
        running: set[Future[tuple[int, Fetched | Failed]]] = set()
        group: list[Fetched] = []

        def fill() -> None:
            for url, task_id in itertools.islice(queue, 4 * self.settings.concurrency - len(running)):
                running.add(pool.submit(contextvars.copy_context().run, self._one, url, task_id))  # the run's request count

        def flush() -> pa.RecordBatch:
            batch = self.media.blob_batch(group, self.run_id)
            for f in group:
                f.discard()
            group.clear()
            return batch

        fill()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            running -= done
            fill()
            for future in done:
                task_id, outcome = future.result()
                # Outcomes are kept for the refs commit: without the bytes, or memory would grow with the run.
                outcomes.append((task_id, dataclasses.replace(outcome, data=None) if isinstance(outcome, Fetched)
                                 else outcome))
                if isinstance(outcome, Fetched):
                    result.fetched += 1
                    if outcome.sha256 in known:
                        outcome.discard()
                        continue
                    known.add(outcome.sha256)
                    group.append(outcome)
            if len(group) >= BATCH_FILES or sum(f.size for f in group) >= BATCH_BYTES:
                yield flush()
        if group:
            yield flush()

    def _one(self, url: str, task_id: int) -> tuple[int, Fetched | Failed]:
        with run_context(self.run_id, self.project_id):
            return task_id, download(self.client, url, task_id, self.dir, max_bytes=self.settings.max_bytes)

    def tag(self, name: str) -> None:
        """Tag the refs' latest version with the task version's tag (after ``store.tag``)."""
        self.media.tag(name)


def start(settings: MediaSettings, client: LabelStudioClient, store: ProjectStore, run_id: str,
          staging_root: Path) -> MediaRun | None:
    """A :class:`MediaRun` if ``media.enabled``, else ``None`` (the run does no media work)."""
    return MediaRun(settings, client, store, run_id, staging_root) if settings.enabled else None


def recover_tag(settings: MediaSettings, store: ProjectStore, tag: str) -> None:
    """Tag the refs like the task version a dead run committed (recovery, before any new fetch:
    the refs' latest version is what that run, or an earlier one, committed)."""
    if settings.enabled:
        MediaStore(store).tag(tag)
