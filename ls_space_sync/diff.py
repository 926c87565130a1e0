"""Moved to :mod:`ls_space_sync.read.diff`; this old path is the same module, kept for one release."""

import sys

from ls_space_sync.read import diff as _module

sys.modules[__name__] = _module
