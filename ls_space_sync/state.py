"""Moved to :mod:`ls_space_sync.store.state`; this old path is the same module, kept for one release."""

import sys

from ls_space_sync.store import state as _module

sys.modules[__name__] = _module
