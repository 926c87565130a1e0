"""Moved to :mod:`ls_space_sync.pull.run`; this old path is the same module, kept for one release."""

import sys

from ls_space_sync.pull import run as _module

sys.modules[__name__] = _module
