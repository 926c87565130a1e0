"""Re-upload a stored version's media that Label Studio no longer serves (``push --media reupload``).

For each pushed task, every media key whose URL the version has bytes for (the refs at the
version, :class:`ls_space_sync.media.read.MediaReader`) is checked with one ``GET`` through the
client (its connections, token, transport retries; the body is not read): a 2xx answer means the
server still serves it, and the task is pushed as stored. Otherwise the stored bytes are uploaded
to the target project with :meth:`LabelStudioClient.upload_file` (a file, no task) and the task's
data is pushed with the new ``/data/upload/<project>/...`` URL. Content-addressed: each sha256 is
uploaded once per push, and each URL checked once per push.

Cloud-storage URIs (``s3://``, ``gs://``, ``azure-blob://``) are left as they are: they resolve
through a task of the project that owns the storage, not through a plain GET.
"""

from __future__ import annotations

import logging
import mimetypes
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import httpx
import lance

from ls_space_sync.labelstudio.client import LabelStudioClient, LabelStudioError
from ls_space_sync.media.fetch import CLOUD_SCHEMES, resolve
from ls_space_sync.media.read import MediaReader
from ls_space_sync.store.dataset import ProjectStore

log = logging.getLogger(__name__)


def served(client: LabelStudioClient, url: str) -> bool:
    """Whether ``url`` (a task's media value) answers 2xx to a ``GET`` now; the body is not read.

    Transport errors are retried by the client; an HTTP error status (404 of a file deleted from
    the server's media folder, 500 of Label Studio 1.23.2 for an upload whose row is gone) or a
    host still unreachable after the retries means not served.
    """
    try:
        target, with_token = resolve(url, 0, client.url)
    except ValueError:
        return False

    def once() -> int:
        headers = client.auth_headers() if with_token else {}
        with client._http.stream("GET", target, headers=headers) as resp:  # noqa: SLF001 - the client's connections
            return resp.status_code

    try:
        return 200 <= client.call(f"a check of media file {url[:120]}", once) < 300
    except (LabelStudioError, httpx.HTTPError, ValueError):
        return False


class MediaReupload:
    """Rewrites pushed tasks' media URLs to re-uploaded copies of the stored bytes.

    Args:
        client: the target server's client.
        store, ds: the source project's store and the task version being pushed.
        target: the project the files are uploaded to.

    Counts: ``uploaded`` (files sent), ``rewritten`` (task data values changed), ``failed``
    (uploads the server refused, e.g. an extension it does not accept: the URL is pushed as stored).
    """

    def __init__(self, client: LabelStudioClient, store: ProjectStore, ds: lance.LanceDataset, target: int):
        self.client, self.target = client, target
        self.reader = MediaReader(store, ds)
        self.new_url: dict[str, str | None] = {}  # sha256 -> uploaded URL (None: the server refused it)
        self.is_served: dict[str, bool] = {}  # URL -> answered 2xx
        self.uploaded = self.rewritten = self.failed = 0

    def rewrite(self, tasks: list[dict[str, Any]]) -> None:
        """Point these tasks' media values at uploaded copies where the server no longer serves them (in place).

        Raises:
            LabelStudioError: an upload failed other than by a refusal (server down, auth).
        """
        todo: list[tuple[dict[str, Any], str, str]] = []
        for task in tasks:
            for key, m in self.reader.media_of(task).items():
                if m.sha256 is None or m.url.startswith(CLOUD_SCHEMES):
                    continue
                if m.url not in self.is_served:
                    self.is_served[m.url] = served(self.client, m.url)
                if not self.is_served[m.url]:
                    todo.append((task, key, m.sha256))
        need = [s for s in dict.fromkeys(sha for _, _, sha in todo) if s not in self.new_url]
        if need:
            data = self.reader.read(need)
            info = self.reader.info()
            for sha in need:
                if sha not in data:
                    self.new_url[sha] = None
                    continue
                self.new_url[sha] = self._upload(sha, data[sha], info.get(sha, {}))
        for task, key, sha in todo:
            url = self.new_url.get(sha)
            if url is not None:
                task["data"][key] = url
                self.rewritten += 1

    def _upload(self, sha: str, data: bytes, meta: dict[str, Any]) -> str | None:
        mime = meta.get("mime") or "application/octet-stream"
        ext = PurePosixPath(urlsplit(str(meta.get("url") or "")).path).suffix.lower()
        if not ext or len(ext) > 6:
            ext = mimetypes.guess_extension(mime) or ""
        try:
            url = self.client.upload_file(self.target, f"{sha[:16]}{ext}", data, mime)
        except LabelStudioError as exc:
            if exc.status != 400:
                raise
            log.warning("project %s refused the upload of media %s (%s); its tasks keep the stored URL",
                        self.target, sha[:16], exc)
            self.failed += 1
            return None
        self.uploaded += 1
        self.is_served[url] = True
        return url
