"""Where things are kept: the Lance datasets (one per project), the SQL state (runs, cursors,
push links), compaction, and the one-writer locks."""

from ls_space_sync.store.dataset import (  # noqa: F401 - the package's public names
    BadFilter,
    ProjectLocked,
    ProjectStore,
    Staging,
    StoreError,
    check_filter,
    project_lock,
)
