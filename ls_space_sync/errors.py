"""One root for every error a user can cause or meet, with the exit code the CLI gives it.

Shape taken from dlt's ``common/exceptions.py`` and the Singer SDK's ``exceptions.py``: one root
(:class:`LsSpaceSyncError`), and two markers that say what a caller should do about an error:

- :class:`Retriable`: the same call may succeed later (a server that is down, a malformed answer,
  a lock held by another run). The daemon backs off and tries again.
- :class:`Terminal`: the input is wrong; trying again changes nothing until someone fixes it
  (a bad config, a missing tag, a malformed time).

Every message names what went wrong and the fix, in one line, and never holds a secret. The CLI
prints ``error: <message>`` and exits with :attr:`LsSpaceSyncError.exit_code` (0 ok, 1 a project
failed, 2 usage or configuration error); it never prints a traceback for these.
"""

from __future__ import annotations

# Secrets known to this process (API keys, webhook secrets, tokens): masked in every error message
# and log line. Kept here, at the bottom layer, so that every error can mask itself.
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Mask ``value`` (4 characters or more) in every error message and log line from now on."""
    if value and len(value) >= 4:
        _secrets.add(value)


def mask(text: str) -> str:
    """Replace every registered secret in ``text`` with ``***``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


class LsSpaceSyncError(Exception):
    """The root of this package's errors. ``exit_code`` is what the CLI exits with.

    Its text never holds a registered secret (:func:`register_secret`), even where a server's
    answer echoed one: the message is masked when it is made and again when it is shown.
    """

    exit_code: int = 1
    retriable: bool = False

    def __init__(self, *args: object):
        super().__init__(*(mask(a) if isinstance(a, str) else a for a in args))

    def __str__(self) -> str:
        return mask(super().__str__())


class Retriable(LsSpaceSyncError):
    """Marker: the operation may succeed if tried again later."""

    retriable = True


class Terminal(LsSpaceSyncError):
    """Marker: the input must change before the operation can succeed."""


class UsageError(Terminal):
    """A value the user gave is malformed (a time, a ref, a predicate); exit code 2."""

    exit_code = 2


class BadRef(UsageError, ValueError):
    """A version selection that cannot be read: more than one of tag, version and time, or a
    version that is not a number."""


class BadTime(UsageError, ValueError):
    """A time that is not ISO 8601 (``2026-11-21T18:00:00Z``)."""


def bad_time(value: object, what: str = "time") -> BadTime:
    """The error for an unreadable UTC time, naming the accepted forms."""
    return BadTime(
        f"cannot read the {what} {str(value)!r}: write an ISO 8601 time such as 2026-11-21T18:00:00Z, "
        "2026-11-21T18:00:00+01:00 or 2026-11-21 (UTC when no offset is given)"
    )
