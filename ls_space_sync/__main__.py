"""``python -m ls_space_sync`` runs the command line."""

from .cli import run

run()
