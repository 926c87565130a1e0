"""The embedded default: with no Label Studio URL configured, ``ls-space-sync sync`` shows the whole
loop on this machine.

It installs Label Studio into ``<data_dir>/label-studio-venv`` (first run only, a few minutes,
about 1 GB), starts it on 127.0.0.1, creates a sample project from Label Studio's own text
classification template (see :mod:`ls_space_sync.demo`) on first use, syncs it into
``<data_dir>/datasets/`` with state in ``<data_dir>/state.db``, prints the tags, and stops the
server. Every later run reuses the server's data, so each run syncs what changed since the last.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

from pydantic import SecretStr

from ls_space_sync.settings import Settings
from ls_space_sync.store.dataset import ProjectStore


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_demo(settings: Settings, echo: Callable[[str], None] = print,
             note: Callable[[str], None] = _stderr) -> int:
    """Run the quickstart; return the process exit code (0 ok, 1 a failure).

    Args:
        settings: the settings (``data_dir`` holds the Label Studio venv, its data and the store).
        echo: prints a result line (stdout by default). note: prints progress (stderr by default).

    Raises:
        RuntimeError: Label Studio could not be installed or started (the message names its log).
    """
    from ls_space_sync.pull.run import Syncer
    from ls_space_sync.quickstart.demo import create_sample_project
    from ls_space_sync.quickstart.localserver import LocalLabelStudio, ensure_venv

    data_dir = Path(settings.data_dir).resolve()
    note("No Label Studio URL configured (label_studio.url / LABEL_STUDIO_URL): running the quickstart "
         f"with a local Label Studio in {data_dir}.")
    venv = data_dir / "label-studio-venv"
    ensure_venv(venv, log=note)
    marker = data_dir / "quickstart.json"
    server = LocalLabelStudio(data_dir / "label-studio", venv=venv)
    with server:
        note(f"Label Studio is up at {server.url}")
        state = json.loads(marker.read_text()) if marker.exists() else {}
        project_id = state.get("project_id")
        if project_id is None:
            project_id = create_sample_project(server.url, server.api_key)
            marker.write_text(json.dumps({"project_id": project_id}))
            note(f"Created sample project {project_id} from Label Studio's text classification template")
        demo_settings = settings.model_copy(update={
            "label_studio": settings.label_studio.model_copy(
                update={"url": server.url, "api_key": SecretStr(server.api_key)}),
            "projects": [project_id],
            # Media on, as issue 12 asks of the quickstart: the text sample has no media keys (no
            # request); an image project made with quickstart.demo's templates stores its images.
            "media": settings.media.model_copy(update={"enabled": True}),
        })
        with Syncer(demo_settings) as syncer:
            result = syncer.run_once(project_id)
            echo(result.summary())
    store = ProjectStore(settings.resolved_store_root, project_id)
    echo(f"Tags of project {project_id} in {store.uri}:")
    for v in store.versions():
        if v["tags"]:
            echo(f"  {', '.join(v['tags']):12} v{v['version']:<4} {v['timestamp']:%Y-%m-%d %H:%M:%S}Z "
                 f"{v['rows']} tasks")
    echo("Next: point label_studio.url and LABEL_STUDIO_API_KEY at your server (see config.example.yaml), "
               f"or read this version: ls-space-sync --data-dir {settings.data_dir} read --project {project_id}")
    return 0
