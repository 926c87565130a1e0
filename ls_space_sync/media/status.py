"""What a project's media holds and what is missing: ``ls-space-sync media status``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ls_space_sync.media.store import FAILED, MediaStore
from ls_space_sync.store.dataset import ProjectStore, Root, dataset_names


@dataclass
class MediaStatus:
    """One project's media at its latest refs version.

    ``failed`` lists each URL whose last fetch failed: ``{url, reason, http_status, task_id,
    attempts, tried_at, stored_before}`` (``stored_before``: an earlier fetch stored bytes that
    tags still read).
    """

    project: int
    urls: int = 0  # URLs known to the refs
    stored: int = 0  # URLs with bytes
    blobs: int = 0  # distinct files stored (sha256)
    bytes: int = 0  # their total size, in bytes
    failed: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (``media status --json``)."""
        return asdict(self)


def media_status(root: Root, project_id: int, storage_options: dict[str, str] | None = None) -> MediaStatus:
    """Read a project's media status from the store (Label Studio is not asked)."""
    store = ProjectStore(root, project_id)
    store.storage_options = storage_options
    media = MediaStore(store)
    out = MediaStatus(project_id)
    refs = media.ref_rows()
    out.urls = len(refs)
    out.stored = sum(1 for r in refs.values() if r["sha256"])
    blobs = media.blobs()
    if blobs is not None:
        sizes = blobs.to_table(columns=["size"]).column("size")
        out.blobs, out.bytes = len(sizes), int(sum(s or 0 for s in sizes.to_pylist()))
    out.failed = [
        {"url": r["url"], "reason": r["reason"], "http_status": r["http_status"], "task_id": r["task_id"],
         "attempts": r["attempts"], "tried_at": r["tried_at"], "stored_before": bool(r["sha256"])}
        for r in sorted(refs.values(), key=lambda r: r["url"]) if r["status"] == FAILED
    ]
    return out


def media_projects(root: Root) -> list[int]:
    """Ids of the projects that have media refs under the store root (a folder or a bucket)."""
    out = []
    for name in dataset_names(root, "project-*.media-refs.lance"):
        pid = name[len("project-"):-len(".media-refs.lance")]
        if pid.isdigit():
            out.append(int(pid))
    return sorted(out)
