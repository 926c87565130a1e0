"""Stored versions back into Label Studio: the push engine and its links, mirrors, restore."""

from ls_space_sync.push.engine import (  # noqa: F401 - the package's public names
    ORIGIN_KEY,
    LabelConfigMismatch,
    PushError,
    PushLink,
    PushResult,
    PushRun,
    content_hash,
    import_payload,
    push,
)
