"""Moved to :mod:`ls_space_sync.store.compaction`; this old path is the same module, kept for one release."""

import sys

from ls_space_sync.store import compaction as _module

sys.modules[__name__] = _module
