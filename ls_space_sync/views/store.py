"""Where a view lives: a Lance dataset beside its source, ``project-<id>.view-<name>.lance``.

A :class:`ViewStore` is a :class:`ls_space_sync.store.dataset.ProjectStore` whose ``uri`` is the
view's dataset (from :meth:`ProjectStore.sibling_uri`), so versions, tags, properties and refs
(``--tag/--version/--as-of``) work on views exactly as on sources. Each view version stores, as
``ls_space_sync.*`` transaction properties, the source version it reflects (``source_version``),
the transform's ``fingerprint``, ``mode`` (``full`` or ``incremental``) and the ``run_id`` of the
refresh that wrote it.
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime
from typing import Iterator

import lance
from filelock import FileLock, Timeout

from ls_space_sync.errors import Retriable
from ls_space_sync.store.dataset import ProjectStore, Root, StoreError, dataset_names, local_dir


class ViewLocked(StoreError, Retriable):
    """Another refresh of this view is running."""


class ViewStore(ProjectStore):
    """The view ``name`` of ``source``'s project (same root and storage options)."""

    def __init__(self, source: ProjectStore, name: str):
        super().__init__(source.root, source.project_id)
        self.name = name
        self.source = source
        self.uri = source.sibling_uri(f"view-{name}")
        self.storage_options = source.storage_options

    def dataset(self, version: int | str | None = None, *, as_of: datetime | str | None = None) -> lance.LanceDataset:
        """Open the view at a version number, a tag (the source's run tags) or a UTC time (latest by default).

        Raises:
            StoreError: the view was never refreshed, or has no such version or tag.
        """
        if not self.exists():
            raise StoreError(f"view {self.name} of project {self.project_id} has not been built yet; run "
                             f"`ls-space-sync views refresh {self.name}` (or a sync of project {self.project_id})")
        try:
            return super().dataset(version, as_of=as_of)
        except StoreError as exc:
            raise StoreError(str(exc).replace(f"project {self.project_id}", f"view {self.name}", 1)) from None

    def state(self) -> dict[str, str]:
        """The properties of the latest view version (``source_version``, ``fingerprint``, ...); ``{}`` if none."""
        if not self.exists():
            return {}
        return self.properties(self.dataset().version)

    def set_tag(self, name: str, version: int) -> None:
        """Point tag ``name`` at ``version``, moving it if it names another version (a rebuild of the
        same source version with a changed transform)."""
        ds = self.dataset()
        try:
            ds.tags.create(name, version)
        except ValueError:
            if ds.tags.get_version(name) != version:
                ds.tags.update(name, version)


@contextmanager
def view_lock(root: Root, project_id: int, name: str, wait_seconds: float = 0) -> Iterator[None]:
    """Hold the one-writer lock of a view (``<root>/project-<id>.view-<name>.lock``), waiting up to
    ``wait_seconds`` for another refresh of it to finish.

    Raises:
        ViewLocked: another process or thread is still refreshing this view.
    """
    folder = local_dir(root)  # for an object store: the local staging_dir, beside the project locks
    folder.mkdir(parents=True, exist_ok=True)
    path = str(folder / f"project-{project_id}.view-{name}.lock")
    lock = FileLock(path, timeout=wait_seconds, is_singleton=False, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise ViewLocked(f"view {name} of project {project_id} is being refreshed by another run; wait for it") from None
    try:
        yield
    finally:
        lock.release()


def stored_views(root: Root) -> dict[str, list[int]]:
    """The views that have a dataset under the store root: ``{name: [source project ids]}``.

    Found in the store (``project-<id>.view-<name>.lance``, a folder or a bucket), so readers need
    no config: SQL's ``view_<name>`` tables. A name under two projects (a view moved to another
    source) lists both.
    """
    out: dict[str, list[int]] = {}
    for entry in dataset_names(root, "project-*.view-*.lance"):
        head, _, rest = entry.partition(".view-")
        pid, name = head[len("project-"):], rest[:-len(".lance")]
        if pid.isdigit() and ViewStore(ProjectStore(root, int(pid)), name).exists():
            out.setdefault(name, []).append(int(pid))
    return out
