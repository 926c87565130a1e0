"""Which stored version a user means: the one model of a ref. Pure: no I/O.

A ref names one version of a project's dataset in one of three ways:

- a **tag** (``run-000042``): what a run was tagged;
- a **version number** (``42``; in a ref string also ``v42``): Lance's own version;
- a **UTC time** (``@2026-11-21T18:00:00Z`` in a ref string): the version current at that time.

Settled once here: in a ref string a bare number is a version number, never a tag (the tags this
tool writes are ``run-NNNNNN``); ``--tag X`` is always a tag name. ``None``, ``""``, ``latest``
and ``head`` mean the latest version.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from typing import Any

from ls_space_sync.errors import BadRef, bad_time

_LATEST = {"", "latest", "head"}


def parse_time(value: datetime | date | str) -> datetime:
    """Read a UTC time: an aware or naive (UTC) datetime, or ISO 8601 text (``Z``, an offset, or none).

    A date alone (``2026-11-21``) is its midnight UTC.

    Raises:
        BadTime: text that is not ISO 8601; the message names the accepted forms.
    """
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    if isinstance(value, date):
        return datetime.combine(value, time(), tzinfo=timezone.utc)
    text = str(value).strip()
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise bad_time(value) from None
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)


@dataclass(frozen=True)
class Ref:
    """One version of a dataset: at most one of ``tag``, ``version`` and ``as_of`` is set
    (none: the latest)."""

    tag: str | None = None
    version: int | None = None
    as_of: datetime | None = None

    @property
    def latest(self) -> bool:
        """Whether this is the latest version."""
        return self.tag is None and self.version is None and self.as_of is None

    def dataset_args(self) -> dict[str, Any]:
        """Keyword arguments of ``ProjectStore.dataset``: ``{"version": tag-or-number}`` or ``{"as_of": time}``."""
        if self.as_of is not None:
            return {"as_of": self.as_of}
        return {"version": self.tag if self.tag is not None else self.version}

    def __str__(self) -> str:
        if self.as_of is not None:
            return "@" + self.as_of.isoformat().replace("+00:00", "Z")
        if self.version is not None:
            return f"v{self.version}"
        return self.tag or "latest"


def from_options(tag: str | None = None, version: int | str | None = None,
                 as_of: datetime | date | str | None = None) -> Ref:
    """The ref of the ``--tag``/``--version``/``--as-of`` options (or API keywords), at most one given.

    Raises:
        BadRef: more than one was given, or ``version`` is not a number.
        BadTime: ``as_of`` is not ISO 8601.
    """
    given = [name for name, v in (("--tag", tag), ("--version", version), ("--as-of", as_of)) if v is not None]
    if len(given) > 1:
        raise BadRef(f"give at most one of --tag, --version and --as-of (got {' and '.join(given)})")
    if as_of is not None:
        return Ref(as_of=parse_time(as_of))
    if version is not None:
        try:
            return Ref(version=int(version))
        except (TypeError, ValueError):
            raise BadRef(f"a version is a number, like 7 (got {version!r}); for a tag use --tag") from None
    return Ref(tag=tag) if tag else Ref()


def parse_ref(ref: Ref | str | int | None) -> Ref:
    """Read a ref string: ``latest``, ``7`` or ``v7`` (version 7), ``@<ISO time>`` (as of), else a tag.

    Raises:
        BadTime: ``@`` followed by text that is not ISO 8601.
    """
    if isinstance(ref, Ref):
        return ref
    if ref is None:
        return Ref()
    if isinstance(ref, int):
        return Ref(version=ref)
    text = str(ref).strip()
    if text.lower() in _LATEST:
        return Ref()
    if text.startswith("@"):
        return Ref(as_of=parse_time(text[1:]))
    if text[:1] in "vV" and text[1:].isdigit():
        return Ref(version=int(text[1:]))
    if text.isdigit():
        return Ref(version=int(text))
    return Ref(tag=text)
