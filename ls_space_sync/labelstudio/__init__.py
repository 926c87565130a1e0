"""Everything that talks to Label Studio: the client (endpoints, keyset pager), its retries and
error mapping, and the shapes of the server's answers."""

from ls_space_sync.labelstudio.client import (  # noqa: F401 - the package's public names
    CORE_TASK_FIELDS,
    STAMP_FIELDS,
    AuthError,
    LabelStudioClient,
    LabelStudioError,
    MalformedResponse,
    NotFound,
    ProjectInfo,
    ServerUnavailable,
)
