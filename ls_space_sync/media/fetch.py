"""Resolve a task's media URL and stream the file to local disk, with the API client's retries.

URL forms (Label Studio 1.23.2, read in its source):

- ``/data/upload/<project>/<file>`` (files imported through the UI or ``/api/projects/{id}/import``)
  and ``/data/local-files/?d=<path>`` (local-files storage; the server needs
  ``LOCAL_FILES_SERVING_ENABLED=true`` and ``LOCAL_FILES_DOCUMENT_ROOT``): paths of the server,
  fetched from ``label_studio.url`` with the API token.
- ``s3://``, ``gs://``, ``azure-blob://``: cloud-storage URIs, fetched through the server that owns
  the storage's credentials: ``GET /tasks/<task id>/resolve/?fileuri=<urlsafe base64 of the URI>``
  (``io_storages/proxy_api.py``: it answers 303 to a presigned URL, or proxies the bytes when the
  storage has ``presign=False``). The token is not sent on to another host (httpx drops
  ``Authorization`` on a cross-origin redirect).
- ``http(s)://...``: fetched as is; with the token only if it is on the Label Studio server.

Every download goes through :meth:`LabelStudioClient.call`, so it is retried like any API read
(connection errors, timeouts, 429 and 5xx, with exponential backoff and jitter; a body cut off
mid-stream too) and counted in the client's ``requests``. Bytes are streamed to a file in 1 MiB
chunks while their sha256 is computed: memory per download is one chunk, whatever the file size.
"""

from __future__ import annotations

import base64
import hashlib
import io
import mimetypes
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urljoin, urlsplit

import httpx
from label_studio_sdk.core.api_error import ApiError

from ls_space_sync.labelstudio.client import LabelStudioClient, LabelStudioError

CHUNK_BYTES = 1 << 20
# A file up to this size stays in memory (at most ``4 * media.concurrency`` of them are in flight);
# a larger one is streamed to the staging disk.
SPOOL_BYTES = 1 << 20
CLOUD_SCHEMES = ("s3://", "gs://", "azure-blob://")


@dataclass(frozen=True)
class Fetched:
    """A downloaded file, in memory (``data``) or on the staging disk (``path``): ``size`` bytes,
    sha256 hex digest, MIME type."""

    def read(self) -> bytes:
        """The file's bytes."""
        return self.data if self.data is not None else self.path.read_bytes()  # type: ignore[union-attr]

    def discard(self) -> None:
        """Remove the staging file, if any."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)


    url: str
    path: Path | None  # on the staging disk (a file over SPOOL_BYTES), else None and the bytes are in ``data``
    data: bytes | None
    sha256: str
    size: int
    mime: str
    width: int | None = None  # pixels, images only (Pillow reads the header in the download thread)
    height: int | None = None


@dataclass(frozen=True)
class Failed:
    """A URL that could not be fetched, with the reason (one line, no secrets) and HTTP status if any."""

    url: str
    reason: str
    status: int | None = None


class TooLarge(Exception):
    """The file is larger than ``media.max_bytes`` (never retried)."""


def image_size(path: Path | BinaryIO, mime: str) -> tuple[int | None, int | None]:
    """``(width, height)`` in pixels of an image file (Pillow reads only its header), else ``(None, None)``."""
    if not mime.startswith("image/"):
        return None, None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except (UnidentifiedImageError, OSError, ValueError):
        return None, None


def resolve(url: str, task_id: int, base_url: str) -> tuple[str, bool]:
    """Turn a task's media value into ``(absolute URL, send the API token)``.

    Args:
        url: the value in the task data (see the module docstring for its forms).
        task_id: the task that references it (cloud URIs resolve through the task).
        base_url: ``label_studio.url``.
    """
    if url.startswith(CLOUD_SCHEMES):
        encoded = base64.urlsafe_b64encode(url.encode()).decode()
        return f"{base_url}/tasks/{int(task_id)}/resolve/?fileuri={encoded}", True
    if url.startswith("/"):
        return urljoin(base_url + "/", url.lstrip("/")), True
    same = urlsplit(url)[:2] == urlsplit(base_url)[:2]
    return url, same


def download(client: LabelStudioClient, url: str, task_id: int, dest: Path, *, max_bytes: int) -> Fetched | Failed:
    """Stream one media file into a new file under ``dest``; never raises for a failed URL.

    Args:
        client: the project's Label Studio client (its HTTP connections, token and retry policy).
        url: the value in the task data.
        task_id: the task that references it.
        dest: a staging folder on local disk.
        max_bytes: refuse larger files (``Content-Length`` or bytes read so far).

    Returns:
        :class:`Fetched`, or :class:`Failed` with the reason: an HTTP status that is not retried
        (404, 403, ...) or kept failing after the retries, an unreachable host, a file too large.
    """
    try:
        target, with_token = resolve(url, task_id, client.url)
    except ValueError as exc:
        return Failed(url, f"not a URL: {exc}")

    def once() -> Fetched:
        headers = client.auth_headers() if with_token else {}
        buffer = bytearray()
        path: Path | None = None
        out: Any = None
        try:
            with client._http.stream("GET", target, headers=headers) as resp:  # noqa: SLF001
                if resp.status_code >= 400:
                    resp.read()
                    raise ApiError(status_code=resp.status_code, body=resp.text[:200])
                declared = int(resp.headers.get("content-length") or 0)
                if declared > max_bytes:
                    raise TooLarge(f"{declared} bytes (Content-Length)")
                digest, size = hashlib.sha256(), 0
                for chunk in resp.iter_bytes(CHUNK_BYTES):
                    size += len(chunk)
                    if size > max_bytes:
                        raise TooLarge(f"more than {max_bytes} bytes")
                    digest.update(chunk)
                    if out is None and size > SPOOL_BYTES:  # a large file goes to the staging disk
                        dest.mkdir(parents=True, exist_ok=True)
                        fd, name = tempfile.mkstemp(dir=dest, suffix=".part")
                        path, out = Path(name), os.fdopen(fd, "wb")
                        out.write(buffer)
                        buffer = bytearray()
                    if out is None:
                        buffer += chunk
                    else:
                        out.write(chunk)
                mime = resp.headers.get("content-type", "").split(";")[0].strip()
            if out is not None:
                out.close()
        except BaseException:
            if out is not None:
                out.close()
            if path is not None:
                path.unlink(missing_ok=True)
            raise
        if not mime or mime in ("application/octet-stream", "binary/octet-stream"):
            mime = mimetypes.guess_type(urlsplit(url).path)[0] or mime or "application/octet-stream"
        data = None if path is not None else bytes(buffer)
        width, height = image_size(path if path is not None else io.BytesIO(data or b""), mime)
        return Fetched(url=url, path=path, data=data, sha256=digest.hexdigest(), size=size, mime=mime,
                       width=width, height=height)

    try:
        return client.call(f"media file {_short(url)} of task {task_id}", once)
    except TooLarge as exc:
        return Failed(url, f"too large: {exc}; raise media.max_bytes ({max_bytes}) to store it")
    except LabelStudioError as exc:
        status = exc.status
        if status is not None:
            return Failed(url, f"HTTP {status}" + (f" from {urlsplit(target).netloc}" if not with_token else ""), status)
        return Failed(url, f"cannot reach {urlsplit(target).netloc} after retries")
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:  # not retried: a malformed URL, redirect loops
        return Failed(url, f"cannot fetch: {type(exc).__name__}: {str(exc)[:200]}")
    except OSError as exc:  # local disk: staging folder full or not writable
        return Failed(url, f"local staging disk: {type(exc).__name__}: {exc}")


def _short(url: str, limit: int = 120) -> str:
    return url if len(url) <= limit else url[:limit] + "..."
