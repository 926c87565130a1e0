"""Moved to :mod:`ls_space_sync.read.api`; this old path is the same module, kept for one release."""

import sys

from ls_space_sync.read import api as _module

sys.modules[__name__] = _module
