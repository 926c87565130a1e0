"""Moved to :mod:`ls_space_sync.service.http`; this old path is the same module, kept for one release."""

import sys

from ls_space_sync.service import http as _module

sys.modules[__name__] = _module
