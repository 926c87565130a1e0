"""deploy/ is correct without a Docker engine: the compose wiring, the env file, the unit, the image.

Each check goes through the code the service runs: environment blocks are loaded with
``load_settings(env=...)``, commands are parsed by the click CLI, and the health checks are run
against a real HTTP server of the daemon.
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml
from sqlalchemy.engine import make_url

from ls_space_sync.cli.console import main
from ls_space_sync.service.daemon import Daemon
from ls_space_sync.service.http import HTTPServer
from ls_space_sync.settings import ConfigError, load_settings
from ls_space_sync.quickstart.localserver import free_port

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"

# What a user puts in deploy/.env for compose.
COMPOSE_ENV = {
    "LABEL_STUDIO_API_KEY": "token-from-env-file",
    "LABEL_STUDIO_PASSWORD": "ls-admin-password",
    "POSTGRES_PASSWORD": "pg-password",
    "LS_SPACE_SYNC__SERVER__WEBHOOK_SECRET": "webhook-secret-from-env-file",
}


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``."""
    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg if op == ":-" else ""
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}", one, value)


def compose(env: dict[str, str] = COMPOSE_ENV) -> dict:
    raw = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())

    def walk(node):
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return interpolate(node, env) if isinstance(node, str) else node
    return walk(raw)


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile_env() -> dict[str, str]:
    env = {}
    for word, rest in dockerfile():
        if word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list), f"use the exec (JSON) form: {rest}"
    return value


def console_script() -> str:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    scripts = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    name, _, target = scripts[0].partition("=")
    assert target.strip() == "ls_space_sync.cli:run"
    return name.strip()


def service_settings(env: dict[str, str]):
    """Settings as the ls-space-sync container sees them: image ENV, then the compose environment."""
    svc = compose()["services"]["ls-space-sync"]
    merged = {**dockerfile_env(), **{k: str(v) for k, v in svc["environment"].items()}, **env}
    return load_settings(env=merged)


@pytest.fixture
def health_server(tmp_path):
    """A real HTTP server of the daemon on a free port; yields the port."""
    port = free_port()
    settings = load_settings(env={"LABEL_STUDIO_URL": "http://ls.test", "LABEL_STUDIO_API_KEY": "k"},
                             overrides={"data_dir": str(tmp_path), "projects": [1]})
    daemon = Daemon(settings)
    daemon.scheduler.start(paused=True)
    http = HTTPServer(daemon, "127.0.0.1", port)
    http.start()
    yield port
    http.stop()
    daemon.stop(timeout=5)


# --- docker-compose.yml ------------------------------------------------------------------------

def test_compose_services_and_startup_order():
    services = compose()["services"]
    assert set(services) == {"postgres", "label-studio", "ls-space-sync"}
    assert services["label-studio"]["image"].startswith("heartexlabs/label-studio:")
    assert services["postgres"]["image"].startswith("postgres:")
    sync = services["ls-space-sync"]
    assert sync["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                  "label-studio": {"condition": "service_healthy"}}
    for name, svc in services.items():
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert (DEPLOY / sync["build"]["context"] / sync["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert (DEPLOY / sync["build"]["context"] / "setup.cfg").exists()  # the context is the repository


def test_compose_refuses_to_start_without_the_secrets():
    for name in COMPOSE_ENV:
        with pytest.raises(KeyError, match=name):
            compose({k: v for k, v in COMPOSE_ENV.items() if k != name})


def test_compose_environment_is_what_the_settings_loader_accepts():
    services = compose()["services"]
    settings = service_settings({})
    # Label Studio by its service name and container port.
    assert settings.label_studio.url == "http://label-studio:8080"
    assert any(str(p).endswith(":8080") for p in services["label-studio"]["ports"])
    # The same token on both sides: Label Studio creates it, ls-space-sync uses it.
    ls_env = services["label-studio"]["environment"]
    assert ls_env["LABEL_STUDIO_USER_TOKEN"] == settings.label_studio.api_key.get_secret_value() == "token-from-env-file"
    assert ls_env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert ls_env["SSRF_PROTECTION_ENABLED"] == "false"  # webhooks to ls-space-sync on the compose network
    # The state in the postgres service, with its user, password and database.
    url = make_url(settings.resolved_state_url)
    pg = services["postgres"]["environment"]
    assert (url.drivername, url.host, url.port) == ("postgresql+psycopg2", "postgres", 5432)
    assert (url.username, url.password, url.database) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"])
    assert settings.scheduler.job_store == "sql"
    # Reachable from the other containers, published on the host's loopback only.
    assert (settings.server.host, settings.server.port) == ("0.0.0.0", 9090)
    assert services["ls-space-sync"]["ports"] == [f"127.0.0.1:{settings.server.port}:{settings.server.port}"]
    assert settings.server.public_url == f"http://ls-space-sync:{settings.server.port}"
    assert settings.server.webhook_secret.get_secret_value() == "webhook-secret-from-env-file"
    assert settings.projects == "all"
    assert settings.resolved_store_root == Path("/data/datasets")
    assert services["ls-space-sync"]["volumes"] == ["lsss-data:/data"]


def test_compose_command_is_a_valid_cli_call():
    command = compose()["services"]["ls-space-sync"]["command"]
    assert command[0] == "run"
    cmd = main.get_command(click.Context(main), command[0])
    assert cmd.make_context(command[0], list(command[1:])).params["install_webhooks"] is True


def test_compose_healthcheck_answers(health_server):
    test = compose()["services"]["ls-space-sync"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    code = test[3].replace("9090", str(health_server))
    assert subprocess.run([sys.executable, "-c", code], timeout=30).returncode == 0


# --- the env file ------------------------------------------------------------------------------

def env_example() -> dict[str, str]:
    env = {}
    for line in (DEPLOY / "ls-space-sync.env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def test_env_example_loads_and_covers_the_secrets():
    env = env_example()
    settings = load_settings(env=env)  # an unknown LS_SPACE_SYNC__ key would raise ConfigError
    assert settings.label_studio.url and settings.label_studio.api_key
    assert settings.server.webhook_secret is not None
    assert settings.scheduler.job_store == "sql"
    assert settings.projects == "all"
    assert set(COMPOSE_ENV) <= set(env)  # one file serves systemd and compose
    with pytest.raises(ConfigError, match="unknown key"):
        load_settings(env={**env, "LS_SPACE_SYNC__SERVER__WEBHOOK_SECRETS": "typo"})


# --- systemd -----------------------------------------------------------------------------------

def test_systemd_unit():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read(DEPLOY / "ls-space-sync.service")
    svc = unit["Service"]
    assert svc["User"] not in ("root", "0") and svc["Group"]
    assert svc["Restart"] == "on-failure"
    assert svc["EnvironmentFile"].startswith("/etc/")
    exe, *args = shlex.split(svc["ExecStart"])
    assert Path(exe).name == console_script() and args == ["run"]
    assert svc["KillSignal"] == "SIGTERM"
    defaults = load_settings(env={})
    assert float(svc["TimeoutStopSec"]) > defaults.scheduler.shutdown_timeout_seconds
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "network-online.target" in unit["Unit"]["After"]


# --- Dockerfile --------------------------------------------------------------------------------

def test_dockerfile_runs_the_console_script_as_a_non_root_user():
    steps = dockerfile()
    words = [w for w, _ in steps]
    entry = exec_form(dict(steps)["ENTRYPOINT"])
    cmd = exec_form(dict(steps)["CMD"])
    assert entry == [console_script()]
    assert cmd == ["run"] and main.get_command(click.Context(main), cmd[0]) is not None
    user = dict(steps)["USER"]
    assert user not in ("root", "0") and words.index("USER") < words.index("ENTRYPOINT")
    assert any(w == "RUN" and "pip install" in r and "[postgres]" in r for w, r in steps)
    settings = load_settings(env={**dockerfile_env(), "LABEL_STUDIO_URL": "http://ls:8080", "LABEL_STUDIO_API_KEY": "k"})
    assert settings.server.host == "0.0.0.0"
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {".git", ".venv", ".ci-cache"} <= set(ignored)


def test_dockerfile_healthcheck_answers(health_server):
    rest = dict(dockerfile())["HEALTHCHECK"]
    assert "/health" in rest
    command = exec_form(rest[rest.index("CMD") + 3:].strip())
    assert command[:2] == ["python", "-c"]
    env = {"LS_SPACE_SYNC__SERVER__PORT": str(health_server), "PATH": "/usr/bin:/bin"}
    assert subprocess.run([sys.executable, "-c", command[2]], env=env, timeout=30).returncode == 0
    env["LS_SPACE_SYNC__SERVER__PORT"] = str(free_port())  # nothing listens: unhealthy
    assert subprocess.run([sys.executable, "-c", command[2]], env=env, timeout=30,
                          capture_output=True).returncode != 0
