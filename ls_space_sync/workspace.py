"""The workspace: settings + Label Studio client + state database + store root, built once and
shared by every command, the daemon and the Python API.

It composes the layers below it (:mod:`ls_space_sync.labelstudio`, :mod:`ls_space_sync.store`)
and nothing above: the pull, push and read stages take a :class:`Workspace` (the pull's
:class:`ls_space_sync.pull.run.Syncer` is one, with ``run_once``).
"""

from __future__ import annotations

from typing import TypeVar

from ls_space_sync.labelstudio.client import LabelStudioClient
from ls_space_sync.settings import Settings
from ls_space_sync.store.dataset import ProjectStore
from ls_space_sync.store.state import StateDB

_W = TypeVar("_W", bound="Workspace")


class Workspace:
    """Everything a run needs, built once from the settings.

    Args:
        settings: the loaded settings.
        client: a Label Studio client (default: :meth:`LabelStudioClient.from_settings`).
        state: the state database (default: ``settings.resolved_state_url``, upgraded to the
            current schema on open).

    Raises:
        ConfigError: no Label Studio URL or API key configured (only when ``client`` is not given).
    """

    def __init__(self, settings: Settings, client: LabelStudioClient | None = None, state: StateDB | None = None):
        self.settings = settings
        self.client = client if client is not None else LabelStudioClient.from_settings(settings)
        self.state = state if state is not None else StateDB(settings.resolved_state_url)
        self.root = settings.resolved_store_root

    def close(self) -> None:
        """Close the HTTP connections and the state database's pool."""
        self.client.close()
        self.state.dispose()

    def __enter__(self: _W) -> _W:
        # The subclass's own type, so ``with Syncer(settings) as s`` knows ``s.run_once``.
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def store(self, project_id: int) -> ProjectStore:
        """The dataset of a project under the store root."""
        return ProjectStore(self.root, project_id)

    def project_ids(self) -> list[int]:
        """The configured projects, ascending (``projects: all`` asks the server)."""
        if self.settings.projects == "all":
            return self.client.project_ids()
        return list(self.settings.projects)
