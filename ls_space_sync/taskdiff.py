"""Moved to :mod:`ls_space_sync.model.taskdiff`; this old path is the same module, kept for one release."""

import sys

from ls_space_sync.model import taskdiff as _module

sys.modules[__name__] = _module
