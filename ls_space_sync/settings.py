"""One settings object: a YAML file plus environment variables.

This is the only module that reads the environment. Sources, later wins:

1. embedded defaults (SQLite state and a local Lance store under ``data_dir``);
2. the YAML file (``--config``, else ``$LS_SPACE_SYNC_CONFIG``, else ``./config.yaml`` if present);
3. environment variables: ``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY`` as in Label Studio's
   own tools (ml-backend, SDK), and ``LS_SPACE_SYNC__SECTION__KEY`` for any other key, dlt-style
   (``LS_SPACE_SYNC__SYNC__LAG_SECONDS=30``; values are parsed as YAML scalars).

Invalid input raises :class:`ConfigError` whose message names the key and the fix; the CLI
prints it and exits with code 2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from ls_space_sync.errors import Terminal, register_secret

ENV_PREFIX = "LS_SPACE_SYNC__"
DEFAULT_CONFIG_FILE = "config.yaml"


class ConfigError(Terminal):
    """A configuration problem; the message names the key and how to fix it."""

    exit_code = 2


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LabelStudioSettings(_Section):
    """How to reach the Label Studio server (``label_studio:`` in YAML)."""

    url: str | None = None
    api_key: SecretStr | None = None
    timeout_seconds: float = Field(default=60.0, gt=0)
    retries: int = Field(default=5, ge=0)
    retry_max_wait_seconds: float = Field(default=30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://, e.g. http://localhost:8080")
        return v.rstrip("/")


class SyncSettings(_Section):
    """Pull-sync tuning (``sync:`` in YAML). Times in seconds."""

    page_size: int = Field(default=500, ge=1, le=10000)
    scan_page_size: int = Field(default=5000, ge=1, le=100000)
    lag_seconds: float = Field(default=10.0, ge=0)
    full_scan_every: int = Field(default=20, ge=0)  # 0: only when the task count disagrees
    # core: the task's own keys plus annotations and predictions (labelstudio.CORE_TASK_FIELDS);
    # all: also the Data Manager's derived columns (annotators, drafts, ...), ~1.6x slower to list.
    task_fields: Literal["core", "all"] = "core"
    interval_seconds: float = Field(default=300.0, gt=0)


class ServerSettings(_Section):
    """HTTP endpoints of the daemon (``server:`` in YAML)."""

    host: str = "127.0.0.1"
    port: int = Field(default=9090, ge=0, le=65535)
    webhook_secret: SecretStr | None = None
    webhook_header: str = "X-LS-Space-Sync-Secret"
    debounce_seconds: float = Field(default=2.0, ge=0)
    max_body_bytes: int = Field(default=5_000_000, gt=0)
    public_url: str | None = None
    # A bearer token for GET /, /health and /metrics (``Authorization: Bearer <token>``, or Basic
    # auth with it as the password, so a browser can open the status page); None: open.
    # Webhooks keep their header secret and the ML-backend routes their path secret.
    auth: SecretStr | None = None


class ScheduleSettings(_Section):
    """A project's schedule (``schedules: {<project id>: ...}``): an interval or a cron expression."""

    interval_seconds: float | None = Field(default=None, gt=0)
    cron: str | None = None  # standard 5-field crontab, UTC


class SchedulerSettings(_Section):
    """The daemon's scheduler (``scheduler:`` in YAML). Times in seconds."""

    job_store: str = "memory"  # memory | sql (the state database) | redis://host:port/db
    jitter_seconds: float = Field(default=10.0, ge=0)
    # A poll that waits longer than this for a free worker (or a daemon that slept) is skipped until
    # its next interval. An hour, not a minute: at start-up every project polls at once and MAX_WORKERS
    # run at a time, so with long first syncs a minute dropped 6 of 10 (bench/scale_daemons.py).
    misfire_grace_seconds: float = Field(default=3600.0, gt=0)
    shutdown_timeout_seconds: float = Field(default=120.0, gt=0)
    max_backoff_seconds: float = Field(default=900.0, gt=0)


class CompactionSettings(_Section):
    """Store maintenance (``compaction:`` in YAML). Times in seconds; ``None`` turns a policy off."""

    interval_seconds: float | None = Field(default=86400.0, gt=0)  # run in the daemon on this interval (None: never)
    retention_seconds: float = Field(default=7 * 86400.0, ge=0)  # untagged versions older than this are removed
    keep_tags_days: float | None = Field(default=None, gt=0)  # prune run tags older than this
    keep_tags_count: int | None = Field(default=None, gt=0)  # keep only the newest N run tags
    # A sync run first merges the small fragments (one per earlier run) when there are more than
    # this many, so its commit stays flat between compactions (None: only compaction merges).
    max_small_fragments: int | None = Field(default=20, gt=0)


class MirrorSettings(_Section):
    """A mirror pair (``mirrors: [...]``): pull ``source`` into its dataset, push each new version to ``target``."""

    source: int
    target: int | None = None  # None: create a project on first push
    both_ways: bool = False  # also pull edits in target and push them back to source
    delete: bool = True  # delete target tasks whose source rows are deleted
    filter: str | None = None  # SQL predicate on columns, e.g. "is_labeled = true"


class PushSettings(_Section):
    """Push tuning (``push:`` in YAML)."""

    chunk_size: int = Field(default=500, ge=1, le=10000)


class ClusterSettings(_Section):
    """Several daemons and writers sharing one state database (``cluster:`` in YAML; seconds).

    Leases in the state database replace the local lock file when the state is PostgreSQL or the
    store is not a local folder; the daemons share the projects when the state is PostgreSQL and
    the job store is ``memory`` (``enabled: auto``). See docs/deploy.md.
    """

    enabled: Literal["auto", "on", "off"] = "auto"  # share the projects with other daemons
    lease_seconds: float = Field(default=30.0, ge=1)  # a dead holder's projects move within this
    # How the other daemons reach this one's HTTP server for forwarded webhooks (default:
    # server.public_url, else http://<server.host>:<server.port>).
    advertise_url: str | None = None


class MediaSettings(_Section):
    """The media files tasks reference (``media:`` in YAML; docs/media.md). Sizes in bytes."""

    enabled: bool = False  # fetch and version the files; off for existing configs, on in the quickstart
    # Task data keys that hold media URLs; None: the ``$keys`` of the label config's media object
    # tags (Image, Audio, Video, HyperText, PDF, ...).
    keys: list[str] | None = None
    max_bytes: int = Field(default=200_000_000, gt=0)  # a larger file is recorded failed, not stored
    concurrency: int = Field(default=8, ge=1, le=64)  # downloads in flight at once, per project
    # Download the files of every new or changed task again (a file replaced under the same URL
    # becomes a new blob); False: only URLs never stored.
    refetch_changed: bool = True


# The built-in views (ls_space_sync/views/builtins.py), usable by name alone: ``views: [{name: regions, project: 3}]``.
BUILTIN_VIEWS = ("regions", "annotations", "task_labels")


class ViewSettings(_Section):
    """A materialized view of a project (``views: [...]``), refreshed after every sync run.

    The transform is one of ``builtin`` (a name of :data:`BUILTIN_VIEWS`; the default when the
    view's ``name`` is one), ``sql`` (DuckDB SQL over the table ``tasks``: the task rows) or
    ``python`` (``module:function`` taking a ``pyarrow.Table`` of task rows and returning the view's
    rows). Every view row carries ``task_id``, and ``primary_key`` (required for ``sql``/``python``)
    starts with it; see docs/views.md.
    """

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    project: int
    builtin: Literal["regions", "annotations", "task_labels"] | None = None
    sql: str | None = None
    python: str | None = Field(default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    primary_key: list[str] | None = None
    executor: Literal["inprocess", "ray"] = "inprocess"

    @model_validator(mode="after")
    def _one_transform(self) -> "ViewSettings":
        given = [k for k in ("builtin", "sql", "python") if getattr(self, k)]
        if not given and self.name in BUILTIN_VIEWS:
            self.builtin = self.name  # type: ignore[assignment]
            given = ["builtin"]
        if len(given) != 1:
            raise ValueError(f"view {self.name!r}: give exactly one of builtin, sql, python "
                             f"(got {', '.join(given) or 'none'}); built-in views: {', '.join(BUILTIN_VIEWS)}")
        if not self.builtin:
            if not self.primary_key:
                raise ValueError(f"view {self.name!r}: a sql or python view needs primary_key, e.g. [task_id]")
            if self.primary_key[0] != "task_id":
                raise ValueError(f"view {self.name!r}: primary_key must start with task_id "
                                 f"(got {self.primary_key}), e.g. [task_id, annotation_id]")
        return self


class Settings(_Section):
    """All settings. Paths are resolved against the current directory."""

    label_studio: LabelStudioSettings = Field(default_factory=LabelStudioSettings)
    projects: list[int] | Literal["all"] = "all"
    data_dir: Path = Path("./ls-space-data")
    state_url: str | None = None
    # A folder, or a URI where Lance writes: s3://bucket/prefix, gs://, az://, file:// (see StoreRoot).
    store_root: str | None = None
    # Lance's options for an object-store root (aws_endpoint, aws_region, allow_http, ...);
    # credentials come from the usual environment variables (AWS_ACCESS_KEY_ID, ...).
    storage_options: dict[str, str] = Field(default_factory=dict)
    # The local folder of the staging files and locks when store_root is a URI (default: data_dir/staging).
    staging_dir: Path | None = None
    sync: SyncSettings = Field(default_factory=SyncSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    schedules: dict[int, ScheduleSettings] = Field(default_factory=dict)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    compaction: CompactionSettings = Field(default_factory=CompactionSettings)
    mirrors: list[MirrorSettings] = Field(default_factory=list)
    push: PushSettings = Field(default_factory=PushSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    media: MediaSettings = Field(default_factory=MediaSettings)
    views: list[ViewSettings] = Field(default_factory=list)
    log_format: Literal["auto", "json", "text"] = "auto"

    @field_validator("projects", mode="before")
    @classmethod
    def _projects(cls, v: Any) -> Any:
        if isinstance(v, (int, str)) and str(v).strip().isdigit():
            return [int(v)]
        if isinstance(v, str) and "," in v:
            return [int(p) for p in v.split(",") if p.strip()]
        return v

    @field_validator("views")
    @classmethod
    def _unique_views(cls, v: list[ViewSettings]) -> list[ViewSettings]:
        names = [view.name for view in v]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"view names must be unique (their SQL tables are view_<name>): {', '.join(twice)}")
        return v

    @property
    def resolved_state_url(self) -> str:
        """The SQLAlchemy URL of the state database (default: SQLite file in ``data_dir``)."""
        return self.state_url or f"sqlite:///{(self.data_dir / 'state.db').resolve()}"

    @field_validator("data_dir", "staging_dir", mode="before")
    @classmethod
    def _local_dirs(cls, v: Any, info: Any) -> Any:
        if isinstance(v, str) and "://" in v and not v.startswith("file://"):
            raise ConfigError(f"{info.field_name} must be a local folder (the state, staging files and locks); "
                              f"put the bucket in store_root: {v}")
        return _file_path(v) if isinstance(v, str) else v

    @field_validator("store_root", mode="before")
    @classmethod
    def _store_root(cls, v: Any) -> Any:
        if isinstance(v, os.PathLike):
            return os.fspath(v)
        if isinstance(v, str) and "://" in v and not v.startswith("file://"):
            StoreRoot.parse(v, {}, Path("."))  # a bad URI fails here, naming the fix
        return v

    @field_validator("storage_options", mode="before")
    @classmethod
    def _storage_options(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        # YAML's true/1 are Lance's "true"/"1": every option is a string to object_store.
        return {str(k): (str(x).lower() if isinstance(x, bool) else str(x)) for k, x in v.items()}

    @property
    def resolved_store_root(self) -> Path | StoreRoot:
        """Where the project datasets live: the folder (a ``Path``, as for every local store) or,
        for an object-store URI, a :class:`StoreRoot` carrying the storage options."""
        root = self.store_root
        if root is None or "://" not in root or root.startswith("file://"):
            return (Path(_file_path(root)) if root else self.data_dir / "datasets").resolve()
        for key, value in self.storage_options.items():
            if _is_secret_name(key):
                register_secret(value)
        local = (self.staging_dir or self.data_dir / "staging").resolve()
        return StoreRoot.parse(root, self.storage_options, local)

    def require_label_studio(self) -> tuple[str, str]:
        """Return ``(url, api_key)``; raise :class:`ConfigError` naming the fix if either is missing."""
        if not self.label_studio.url:
            raise ConfigError(
                "label_studio.url is not set: add it to the config file or set LABEL_STUDIO_URL "
                "(e.g. http://localhost:8080)"
            )
        if self.label_studio.api_key is None or not self.label_studio.api_key.get_secret_value():
            raise ConfigError(
                "label_studio.api_key is not set: add it to the config file or set "
                "LABEL_STUDIO_API_KEY (Label Studio > Account & Settings > Access Token)"
            )
        return self.label_studio.url, self.label_studio.api_key.get_secret_value()


# The object stores Lance writes (its object_store backends); file:// is a local folder.
STORE_SCHEMES = {"s3": "S3 or S3-compatible", "gs": "Google Cloud Storage", "az": "Azure Blob Storage",
                 "abfss": "Azure Data Lake"}
_SECRET_WORDS = ("secret", "token", "password", "sas", "key", "credential")


def _is_secret_name(name: str) -> bool:
    """Whether a storage option or environment variable holds a credential (masked everywhere)."""
    return any(word in name.lower() for word in _SECRET_WORDS)


def _file_path(root: str) -> str:
    return unquote(urlsplit(root).path) if root.startswith("file://") else root


@dataclass(frozen=True)
class StoreRoot:
    """An object-store location of the project datasets, ``s3://bucket/prefix`` and the like.

    A local store root stays a ``Path`` (``Settings.resolved_store_root``); this is the other kind.
    Lance reads and writes it with :attr:`storage_options` (object_store's keys: ``aws_endpoint``,
    ``aws_region``, ``allow_http``, ...) and takes credentials the usual way (``AWS_ACCESS_KEY_ID``
    and ``AWS_SECRET_ACCESS_KEY``, a profile or an instance role; ``GOOGLE_APPLICATION_CREDENTIALS``;
    ``AZURE_STORAGE_ACCOUNT_NAME`` and ``AZURE_STORAGE_ACCOUNT_KEY``), never from this project's files.

    Attributes:
        uri: ``scheme://bucket/prefix`` without a trailing slash.
        storage_options: passed to every Lance call on the store (may hold secrets: never log it).
        local_dir: the local folder of staging files and project locks (``staging_dir``).
    """

    uri: str
    storage_options: dict[str, str]
    local_dir: Path

    @classmethod
    def parse(cls, uri: str, storage_options: Mapping[str, str], local_dir: Path) -> StoreRoot:
        """Check an object-store URI and build the root.

        Raises:
            ConfigError: an unknown scheme, no bucket, or credentials inside the URI.
        """
        parts = urlsplit(uri)
        if parts.scheme not in STORE_SCHEMES:
            raise ConfigError(
                f"store_root {parts.scheme}://... is not a store Lance writes; use a folder or one of "
                + ", ".join(f"{s}:// ({what})" for s, what in STORE_SCHEMES.items()) + ", file:// (a folder)")
        if "@" in parts.netloc or parts.password:
            raise ConfigError("store_root must not hold credentials; remove user:password@ from it and set "
                              "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or your cloud's variables) instead")
        if not parts.netloc:
            raise ConfigError(f"store_root {uri!r} names no bucket; write it as {parts.scheme}://bucket/prefix")
        return cls(uri.rstrip("/"), dict(storage_options), local_dir)

    @property
    def scheme(self) -> str:
        """``s3``, ``gs``, ``az``, ..."""
        return urlsplit(self.uri).scheme

    def join(self, name: str) -> str:
        """The URI of ``name`` (a dataset folder) under the root."""
        return f"{self.uri}/{name}"

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:  # never the storage options: they may hold credentials
        return f"StoreRoot({self.uri!r})"


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    for key in path[:-1]:
        node = tree.get(key)
        if not isinstance(node, dict):
            node = tree[key] = {}
        tree = node
    tree[path[-1]] = value


def _env_overrides(env: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if env.get("LABEL_STUDIO_URL"):
        _set_path(out, ["label_studio", "url"], env["LABEL_STUDIO_URL"])
    if env.get("LABEL_STUDIO_API_KEY"):
        _set_path(out, ["label_studio", "api_key"], env["LABEL_STUDIO_API_KEY"])
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        if not path:
            continue
        secret = path[-1] in {"api_key", "webhook_secret", "auth"} or path[0] == "storage_options"
        _set_path(out, path, raw if secret else yaml.safe_load(raw))
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _explain(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("list[", "literal[")))
        if e["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling against config.example.yaml"
        elif key.startswith("projects"):
            msg = "must be a list of project ids like [1, 2] or the word all"
        else:
            msg = e["msg"]
        # Never echo the offending value: it may be a secret.
        lines.append(f"  {key or '<top level>'}: {msg}")
    return "\n".join(lines)


def load_settings(
    config_path: str | Path | None = None,
    env: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Build the settings from defaults, a YAML file and the environment.

    Args:
        config_path: YAML file; ``None`` means ``$LS_SPACE_SYNC_CONFIG`` or ``./config.yaml`` if present.
        env: environment mapping (default: ``os.environ``).
        overrides: nested dict applied last (used by the CLI for flags).

    Raises:
        ConfigError: the file is missing or not YAML, or a key is unknown or has a bad value.
    """
    env = dict(os.environ if env is None else env)
    explicit = config_path is not None or bool(env.get(ENV_PREFIX + "CONFIG"))
    path = Path(config_path or env.get(ENV_PREFIX + "CONFIG") or DEFAULT_CONFIG_FILE)
    data: dict[str, Any] = {}
    source = "defaults and environment"
    if path.exists():
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}; fix the syntax (see config.example.yaml)")
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a YAML mapping of keys (see config.example.yaml)")
        data = loaded
    elif explicit:
        raise ConfigError(f"config file {path} does not exist; pass an existing file to --config")
    data = _merge(data, _env_overrides(env))
    for name, value in env.items():
        # Object-store credentials that Lance reads from the environment: never in a message.
        if name.startswith(("AWS_", "AZURE_", "GOOGLE_")) and _is_secret_name(name):
            register_secret(value)
    data = _merge(data, overrides or {})
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, source)) from None


def server_venv_override(env: Mapping[str, str] | None = None) -> str | None:
    """Where tests and benchmarks keep the Label Studio server's virtualenv (``LS_SPACE_SYNC_TEST_LS_VENV``).

    Args:
        env: the variables to read; this process's environment when ``None``.

    Returns:
        The virtualenv's path as given, or ``None`` when the variable is unset.
    """
    source: Mapping[str, str] = os.environ if env is None else env
    return source.get("LS_SPACE_SYNC_TEST_LS_VENV")


def environment() -> dict[str, str]:
    """A copy of this process's environment, for the environment of a child process (the local
    Label Studio server); the only other place besides :func:`load_settings` that reads it."""
    return dict(os.environ)
