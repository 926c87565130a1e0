"""Task, annotation and label config history of a project synced from a real Label Studio after each step."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ls_space_sync.cli.console import main
from ls_space_sync.pull.run import Syncer
from ls_space_sync.settings import load_settings
from tests.integration.test_pull_sync import server_tasks

pytestmark = pytest.mark.integration

CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text"><Choice value="pos"/><Choice value="neg"/></Choices>
</View>"""
NEW_CONFIG = CONFIG.replace('<Choice value="neg"/>', '<Choice value="neg"/><Choice value="mixed"/>')


def choice(value):
    return {"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [value]}}


def test_history_and_configs_are_the_steps_taken(label_studio, ls_client, new_project, tmp_path):
    pid = new_project(CONFIG)
    task_id, other = ls_client.projects.import_tasks(
        id=pid, request=[{"data": {"text": "Ada"}}, {"data": {"text": "Grace"}}], return_task_ids=True).task_ids
    settings = load_settings(
        env={"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.api_key},
        overrides={"data_dir": str(tmp_path / "data"), "projects": [pid]},
    )
    syncer = Syncer(settings)
    versions = []

    def sync():
        result = syncer.run_once(pid)
        assert result.version is not None, result.summary()
        versions.append((result.version, result.tag))

    try:
        sync()                                                                            # 1 created
        annotation = ls_client.annotations.create(id=task_id, result=[choice("pos")]).id
        sync()                                                                            # 2 annotated
        ls_client.annotations.update(id=annotation, result=[choice("neg")])
        sync()                                                                            # 3 annotation edited
        ls_client.tasks.update(id=task_id, data={"text": "Ada Lovelace"})
        sync()                                                                            # 4 data edited
        author = server_tasks(label_studio, pid)[task_id]["annotations"][0]["completed_by"]
        author = author["id"] if isinstance(author, dict) else author
        ls_client.annotations.delete(id=annotation)
        sync()                                                                            # 5 annotation deleted
        # A run that changes no task commits nothing, so the new config lands with the next task change.
        ls_client.projects.update(id=pid, label_config=NEW_CONFIG)
        ls_client.tasks.update(id=other, data={"text": "Grace Hopper"})
        sync()                                                                            # 6 config changed
    finally:
        syncer.close()

    data_dir = str(settings.data_dir)
    runner = CliRunner()
    out = runner.invoke(main, ["--data-dir", data_dir, "history", "-p", str(pid), "--task", str(task_id), "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    entries = doc["entries"]
    assert [(e["version"], e["tag"]) for e in entries] == versions[:5]
    assert [e["kind"] for e in entries] == ["inserted", "updated", "updated", "updated", "updated"]
    assert [[(a["kind"], a["id"], a["by"]) for a in e["annotations"]] for e in entries] == [
        [], [("added", annotation, author)], [("changed", annotation, author)], [], [("removed", annotation, author)]]
    assert "data" in entries[3]["fields"] and "data" not in entries[1]["fields"] + entries[2]["fields"]
    assert all(not e["predictions"] for e in entries)
    assert all(e["time"].endswith("Z") and e["run_id"] for e in entries)
    assert doc["versions"] == len(versions)

    text = runner.invoke(main, ["--data-dir", data_dir, "history", "-p", str(pid), "--task", str(task_id)])
    assert text.exit_code == 0, text.output
    print("\n" + text.output)  # the README's example comes from this output
    assert f"annotations +{annotation} by {author}" in text.output and "data" in text.output

    one = runner.invoke(main, ["--data-dir", data_dir, "history", "-p", str(pid), "--task", str(task_id),
                               "--annotation", str(annotation), "--json"])
    assert one.exit_code == 0, one.output
    assert [(e["version"], e["kind"]) for e in json.loads(one.output)["entries"]] == [
        (versions[1][0], "added"), (versions[2][0], "changed"), (versions[4][0], "removed")]

    configs = runner.invoke(main, ["--data-dir", data_dir, "configs", "-p", str(pid), "--json"])
    assert configs.exit_code == 0, configs.output
    changes = json.loads(configs.output)["changes"]
    assert [(c["version"], c["tag"]) for c in changes] == [versions[0], versions[5]]
    assert changes[0]["label_config"] == CONFIG and changes[1]["label_config"] == NEW_CONFIG
    assert "+  <Choices" in changes[1]["diff"] and '<Choice value="mixed"/>' in changes[1]["diff"]
    text = runner.invoke(main, ["--data-dir", data_dir, "configs", "-p", str(pid)])
    print(text.output)

    missing = runner.invoke(main, ["--data-dir", data_dir, "history", "-p", str(pid), "--task", "999999"])
    assert missing.exit_code == 1 and missing.output.startswith("error: ") and len(missing.output.splitlines()) == 1
