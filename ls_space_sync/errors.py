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


class LsSpaceSyncError(Exception):
    """The root of this package's errors. ``exit_code`` is what the CLI exits with."""

    exit_code: int = 1
    retriable: bool = False


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
