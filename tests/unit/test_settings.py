"""settings: YAML + environment, clear errors."""

import pytest

from ls_space_sync.settings import ConfigError, load_settings


def test_smallest_config_and_embedded_defaults(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("label_studio:\n  url: http://localhost:8080\n  api_key: abc123\nprojects: [1, 2]\ndata_dir: ./d\n")
    s = load_settings(cfg, env={})
    assert s.projects == [1, 2] and s.label_studio.url == "http://localhost:8080"
    assert s.resolved_state_url.startswith("sqlite:///") and s.resolved_state_url.endswith("d/state.db")
    assert str(s.resolved_store_root).endswith("d/datasets")
    assert "abc123" not in repr(s)  # secrets stay out of reprs and logs


def test_label_studio_env_names_and_prefixed_keys():
    s = load_settings(env={"LABEL_STUDIO_URL": "http://h:1/", "LABEL_STUDIO_API_KEY": "k" * 8,
                           "LS_SPACE_SYNC__SYNC__LAG_SECONDS": "30", "LS_SPACE_SYNC__PROJECTS": "all"})
    assert s.require_label_studio() == ("http://h:1", "k" * 8)
    assert s.sync.lag_seconds == 30 and s.projects == "all"


@pytest.mark.parametrize("text, needle", [
    ("projects: [one]", "projects: must be a list of project ids"),
    ("sync:\n  lag_secs: 3", "sync.lag_secs: unknown key"),
    ("label_studio:\n  url: localhost:8080", "label_studio.url: Value error, must start with http://"),
    ("projects: [1\n", "not valid YAML"),
    ("- 1\n- 2", "must hold a YAML mapping"),
])
def test_bad_config_names_the_key_and_fix(tmp_path, text, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[")):
        load_settings(cfg, env={})


def test_missing_file_and_missing_token(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml", env={})
    s = load_settings(env={"LABEL_STUDIO_URL": "http://h"})
    with pytest.raises(ConfigError, match="LABEL_STUDIO_API_KEY"):
        s.require_label_studio()


def test_example_config_is_valid():
    from pathlib import Path

    s = load_settings(Path(__file__).parents[2] / "config.example.yaml", env={})
    assert s.projects == [1, 2] and s.schedules[2].cron == "*/5 * * * *"
