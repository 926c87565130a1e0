"""Moved to :mod:`ls_space_sync.model.changes`; this old path is the same module, kept for one release."""

import sys

from ls_space_sync.model import changes as _module

sys.modules[__name__] = _module
