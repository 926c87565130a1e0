"""Moved to :mod:`ls_space_sync.push.mirror`; this old path is the same module, kept for one release."""

import sys

from ls_space_sync.push import mirror as _module

sys.modules[__name__] = _module
