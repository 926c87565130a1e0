"""Moved to :mod:`ls_space_sync.quickstart.localserver`; this old path is the same module, kept for one release."""

import sys

from ls_space_sync.quickstart import localserver as _module

sys.modules[__name__] = _module
