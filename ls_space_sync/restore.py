"""Moved to :mod:`ls_space_sync.push.restore`; this old path is the same module, kept for one release."""

import sys

from ls_space_sync.push import restore as _module

sys.modules[__name__] = _module
