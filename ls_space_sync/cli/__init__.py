"""The command line, the only module tree that imports click: ``ls-space-sync [--config FILE] COMMAND``."""

from ls_space_sync.cli.console import main, run  # noqa: F401 - the entry point (setup.cfg) and the group
