"""One Settings object, built once at the entry point and passed down.

Nothing here reads the environment at import time; ``Settings()`` does, when
the CLI builds it.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, PrivateAttr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from .settings_view import OPIK_CLOUD_URL as OPIK_CLOUD_URL  # re-exported: where readers of Settings look
from .settings_view import CaptureSettings, toml_items
from .settings_view import ConfigFileError as ConfigFileError

if TYPE_CHECKING:
    from .config_load import ConfigProblem

DEFAULT_PORT = 9909
DEFAULT_UPSTREAM = "https://api.anthropic.com"
DEFAULT_OPENAI_UPSTREAM = "https://api.openai.com"  # Codex with an API key
DEFAULT_CHATGPT_UPSTREAM = "https://chatgpt.com"  # Codex with a ChatGPT login (/backend-api/...)
DEFAULT_OPIK_PROJECT = "claude-code"


def default_home() -> Path:
    return Path(os.path.expanduser("~")) / ".opik-cipx"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings, CaptureSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    home: Path = Field(default_factory=default_home, validation_alias="CIPX_HOME")
    host: str = Field(default="127.0.0.1", validation_alias="CIPX_HOST")
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535, validation_alias="CIPX_PORT")
    upstream_url: str = Field(default=DEFAULT_UPSTREAM, validation_alias="CIPX_UPSTREAM_URL")
    # Codex's upstreams: requests are routed to them by path and headers (proxy/routing.py).
    openai_upstream_url: str = Field(default=DEFAULT_OPENAI_UPSTREAM, validation_alias="CIPX_OPENAI_UPSTREAM_URL")
    chatgpt_upstream_url: str = Field(default=DEFAULT_CHATGPT_UPSTREAM,
                                      validation_alias="CIPX_CHATGPT_UPSTREAM_URL")
    upstream_proxy: str | None = Field(default=None, validation_alias="CIPX_UPSTREAM_PROXY")
    pricing_path: Path | None = Field(default=None, validation_alias="CIPX_PRICING_PATH")
    # Seconds to wait for the upstream's response head before answering 504.
    upstream_timeout: float = Field(default=600.0, gt=0, validation_alias="CIPX_UPSTREAM_TIMEOUT")
    # Build, attribute and store captures in a child process (off the proxy's GIL); tests of
    # in-process capture stages turn it off.
    capture_worker: bool = Field(default=True, validation_alias="CIPX_CAPTURE_WORKER")
    # The kill switch: `sync` tears the wiring down and `proxy` exits at once (see claude/sync.py).
    disabled: bool = Field(default=False, validation_alias="CIPX_DISABLED")
    # Seconds in-flight streams get to finish on SIGTERM before they are cut.
    shutdown_grace: float = Field(default=10.0, ge=0, validation_alias="CIPX_SHUTDOWN_GRACE")

    # --- Opik destination and shipping (see the sources below for precedence) ---
    opik_base_url: str | None = Field(default=None, validation_alias="OPIK_CIPX_BASE_URL")
    opik_api_key: str | None = Field(default=None, validation_alias="OPIK_CIPX_API_KEY", repr=False)
    opik_workspace: str | None = Field(default=None, validation_alias="OPIK_CIPX_WORKSPACE")
    # A template: {username} {email} {user_email} {user_uuid} {display_name} {org_name}
    # {org_uuid} {user} {hostname}; see identity.render_project.
    opik_project: str = Field(default=DEFAULT_OPIK_PROJECT, validation_alias="OPIK_CIPX_PROJECT")
    opik_debug: bool = Field(default=False, validation_alias="OPIK_CIPX_DEBUG")
    config_path: Path | None = Field(default=None, validation_alias="CIPX_CONFIG")
    capture_content: bool = Field(default=True, validation_alias="CIPX_CAPTURE_CONTENT")
    sample_rate: float = Field(default=1.0, ge=0.0, le=1.0, validation_alias="CIPX_SAMPLE_RATE")
    sentry: str = Field(default="on", validation_alias="CIPX_SENTRY")
    sentry_dsn: str | None = Field(default=None, validation_alias="CIPX_SENTRY_DSN", repr=False)
    # Spans waiting to ship are kept up to this many bytes; past it the oldest lose their content.
    outbox_max_bytes: int = Field(default=256 * 1024**2, ge=64 * 1024, validation_alias="CIPX_OUTBOX_MAX_BYTES")
    # Retention (store/retention.py): raw bodies of calls older than this many days are pruned,
    # their totals kept (0: keep them forever); the spool database is kept under this many MB
    # by pruning the oldest bodies first (0: no cap). Nothing unshipped is ever pruned.
    retention_days: int = Field(default=90, ge=0, validation_alias="CIPX_RETENTION_DAYS")
    spool_max_mb: int = Field(default=0, ge=0, validation_alias="CIPX_SPOOL_MAX_MB")
    # One batch request stays under this many bytes (and 1000 items, Opik's limit).
    ship_batch_bytes: int = Field(default=4 * 1024**2, ge=16 * 1024, validation_alias="CIPX_SHIP_BATCH_BYTES")

    # What config_load.load_settings() had to set aside to build this object (empty for a clean config).
    _problems: list[ConfigProblem] = PrivateAttr(default_factory=list)

    @property
    def config_problems(self) -> list[ConfigProblem]:
        return list(self._problems)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins: arguments, CIPX_*/OPIK_CIPX_* env, OPIK_CC_* env, config.toml, ~/.opik.config.
        return (
            init_settings,
            AliasOnlyEnvSource(settings_cls, env_settings),
            OpikCcEnvSource(settings_cls),
            TomlConfigSource(settings_cls),
            OpikConfigIniSource(settings_cls),
        )

    @field_validator("opik_base_url", "opik_api_key", "opik_workspace", "sentry_dsn")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        value = value.strip() if isinstance(value, str) else value
        return value or None

    @field_validator("opik_base_url")
    @classmethod
    def _opik_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("opik_project")
    @classmethod
    def _project(cls, value: str) -> str:
        return value.strip() or DEFAULT_OPIK_PROJECT

    @field_validator("sentry")
    @classmethod
    def _sentry(cls, value: str) -> str:
        return "off" if value.strip().lower() in ("off", "false", "0", "no", "disabled") else "on"

    @property
    def telemetry_enabled(self) -> bool:
        return bool(self.sentry_dsn) and self.sentry != "off"

    @field_validator("host")
    @classmethod
    def _loopback_only(cls, value: str) -> str:
        if not is_loopback(value):
            raise ValueError(
                "must be a loopback address (127.0.0.1, ::1 or localhost): "
                "the gateway serves captured prompts and never listens beyond this machine"
            )
        return value

    @field_validator("upstream_url", "openai_upstream_url", "chatgpt_upstream_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("upstream_proxy")
    @classmethod
    def _http_proxy(cls, value: str | None) -> str | None:
        if not value:
            return None
        if "://" in value and not value.startswith("http://"):
            # HTTPS upstreams go through the proxy in a CONNECT tunnel; the proxy itself is plain HTTP.
            raise ValueError("must be an http:// proxy URL (HTTPS upstreams are tunnelled through it)")
        return value


class _DictSource(PydanticBaseSettingsSource):
    """A source that computes one dict of field values; pydantic-settings merges it by priority."""

    def values(self) -> dict[str, Any]:
        raise NotImplementedError

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.values().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self.values().items() if v is not None}


class AliasOnlyEnvSource(_DictSource):
    """The env source, minus values found under a bare field name.

    ``populate_by_name`` (wanted so code and tests can pass ``home=...``) also makes
    pydantic-settings match env vars by field name, case-insensitively: ``HOME``
    would become the state dir and ``HOST`` the bind address. Only the ``CIPX_*`` /
    ``OPIK_CIPX_*`` aliases are meant to be read from the environment.
    """

    def __init__(self, settings_cls: type[BaseSettings], inner: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self._inner = inner

    def values(self) -> dict[str, Any]:
        aliased = {
            name for name, info in self.settings_cls.model_fields.items() if isinstance(info.validation_alias, str)
        }
        return {k: v for k, v in self._inner().items() if k not in aliased}


class OpikCcEnvSource(_DictSource):
    """``OPIK_CC_WORKSPACE`` / ``OPIK_CC_PROJECT``: the names the Opik Claude Code plugin uses."""

    def values(self) -> dict[str, Any]:
        return {
            "opik_workspace": os.environ.get("OPIK_CC_WORKSPACE") or None,
            "opik_project": os.environ.get("OPIK_CC_PROJECT") or None,
        }


def _field_keys(settings_cls: type[BaseSettings]) -> dict[str, str]:
    """Lower-cased field names and env aliases -> field name, for config.toml keys."""
    keys: dict[str, str] = {}
    for name, info in settings_cls.model_fields.items():
        keys[name.lower()] = name
        if isinstance(info.validation_alias, str):
            keys[info.validation_alias.lower()] = name
    return keys


def read_config_toml(path: Path, settings_cls: type[BaseSettings] | None = None) -> dict[str, Any]:
    """``config.toml`` as field values. Keys are field names or env names, any case.

    A missing file is empty; a broken one raises :class:`ConfigFileError`.
    Top-level tables (``[opik]``) are flattened, their keys tried as-is and with
    the table's name as a prefix, so ``[opik] base_url`` means ``opik_base_url``.
    """
    return {name: value for name, (_, value) in config_toml_items(path, settings_cls or Settings).items()}


def config_toml_items(path: Path, settings_cls: type[BaseSettings]) -> dict[str, tuple[str, Any]]:
    """Field name -> (the key as the user wrote it, e.g. ``[opik] base_url``, and its value)."""
    return toml_items(path, _field_keys(settings_cls))


class TomlConfigSource(_DictSource):
    """``CIPX_CONFIG`` (default ``<CIPX_HOME>/config.toml``)."""

    def values(self) -> dict[str, Any]:
        if IGNORE_CONFIG_TOML.get():
            return {}
        return read_config_toml(config_toml_path(self.current_state), self.settings_cls)


def config_toml_path(state: Mapping[str, Any]) -> Path:
    path = state.get("config_path") or state.get("CIPX_CONFIG") or os.environ.get("CIPX_CONFIG")
    if not path:
        home = state.get("home") or state.get("CIPX_HOME") or os.environ.get("CIPX_HOME")
        path = Path(home) / "config.toml" if home else default_home() / "config.toml"
    return Path(os.path.expanduser(str(path)))


# Set while config_load.load_settings() builds Settings without a config.toml that does not parse.
IGNORE_CONFIG_TOML: ContextVar[bool] = ContextVar("ignore_config_toml", default=False)


def opik_config_path() -> Path:
    return Path(os.path.expanduser(os.environ.get("OPIK_CONFIG_PATH") or "~/.opik.config"))


def read_opik_config(path: Path) -> dict[str, str]:
    """``~/.opik.config`` as ``opik configure`` writes it: INI keys, later lines winning.

    Read as lines rather than with configparser so that a section placed last
    (``[opik_cc]``) overrides an earlier ``[opik]`` whatever the section names,
    and so duplicate sections are not an error.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        key, sep, value = line.partition("=")
        if not sep:
            key, sep, value = line.partition(":")
        if sep:
            out[key.strip().lower()] = value.strip()
    return out


class OpikConfigIniSource(_DictSource):
    _KEYS: ClassVar[dict[str, str]] = {
        "url_override": "opik_base_url",
        "api_key": "opik_api_key",
        "workspace": "opik_workspace",
        "project_name": "opik_project",
    }

    def values(self) -> dict[str, Any]:
        ini = read_opik_config(opik_config_path())
        return {field: ini[key] for key, field in self._KEYS.items() if ini.get(key)}


def ensure_home(settings: Settings) -> None:
    """Create the state dir (0700: it holds captured prompts) and its subdirs."""
    for path in (settings.home, settings.spool_dir, settings.logs_dir):
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o700)
