"""The command line's shape: lazily loaded commands list the help they really have, and
``ls-space-sync --help`` loads no heavy library (issue 11's start-up goal; its time is measured
in bench/startup.py, never asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import import_module

import pytest

from ls_space_sync.cli.console import LAZY_COMMANDS, main


@pytest.mark.parametrize("name", sorted(LAZY_COMMANDS))
def test_lazy_command_help_is_the_commands_own(name):
    target, short_help = LAZY_COMMANDS[name]
    module, _, attr = target.partition(":")
    command = getattr(import_module(module), attr)
    assert command.name == name
    first_line = (command.help or "").strip().splitlines()[0]
    assert short_help == first_line


def test_every_command_is_listed():
    names = set(main.list_commands(None))  # type: ignore[arg-type]
    assert {"sync", "runs", "tags", "read", *LAZY_COMMANDS} <= names


def test_help_imports_no_heavy_library():
    code = ("import runpy, sys, json\n"
            "sys.argv = ['ls-space-sync', '--help']\n"
            "try:\n    runpy.run_module('ls_space_sync', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'lance', 'pyarrow', 'duckdb', 'sqlalchemy', 'label_studio_sdk', 'pandas', 'pydantic', 'httpx'})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == [], f"--help imported {loaded}"
