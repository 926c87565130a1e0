"""``python -m ls_space_sync`` runs the command line."""

from ls_space_sync.cli.console import run

run()
