"""Which task data keys hold media, and the media URLs of a task. Pure: no I/O.

Label Studio's object tags that load a file from a URL in the task data (label config reference,
Label Studio 1.23): ``Image``, ``Audio``/``AudioPlus``, ``Video``, ``HyperText`` and ``PDF``
(``valueType="url"`` or not: a value that is not a URL is skipped), ``TimeSeries`` (a CSV URL),
``Paragraphs`` and ``Table`` only when their value is a URL. Their ``value="$key"`` names the key.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any, Iterable, Iterator, Sequence

MEDIA_TAGS = frozenset({"image", "audio", "audioplus", "video", "hypertext", "pdf", "timeseries", "paragraphs"})

# What a media value looks like: an absolute http(s) URL, a cloud-storage URI Label Studio
# resolves, or a path of the server itself (``/data/upload/...``, ``/data/local-files/?d=...``,
# ``/tasks/<id>/resolve/?fileuri=...``, ``/static/samples/...`` of the templates).
_URL = re.compile(r"^(https?://|s3://|gs://|azure-blob://|/(?!/))", re.I)


def media_keys(label_config: str | None, override: Sequence[str] | None = None) -> list[str]:
    """Return the task data keys whose values are media URLs, in order of first use.

    Args:
        label_config: the project's label config XML.
        override: ``media.keys`` from the settings; when given it is the answer as is.

    A config that is not well-formed XML yields ``[]`` (the sync stores no media for it).
    """
    if override is not None:
        return list(override)
    if not label_config:
        return []
    try:
        root = ET.fromstring(label_config)
    except ET.ParseError:
        return []
    keys: list[str] = []
    for el in root.iter():
        if el.tag.lower() not in MEDIA_TAGS:
            continue
        m = re.fullmatch(r"\$([A-Za-z_][\w.\-]*)", (el.attrib.get("value") or "").strip())
        if m and m.group(1) not in keys:
            keys.append(m.group(1))
    return keys


def is_media_url(value: Any) -> bool:
    """Whether a task data value is a URL the sync can fetch (see module docstring)."""
    return isinstance(value, str) and bool(_URL.match(value.strip()))


def task_urls(tasks: Iterable[dict[str, Any]], keys: Sequence[str]) -> Iterator[tuple[int, str, str]]:
    """Yield ``(task id, key, url)`` for each media URL in the ``data`` of Label Studio task objects."""
    for task in tasks:
        data = task.get("data")
        if not isinstance(data, dict):
            continue
        for key in keys:
            value = data.get(key)
            if isinstance(value, str) and is_media_url(value):
                yield int(task["id"]), key, value.strip()
