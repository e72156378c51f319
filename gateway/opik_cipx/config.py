"""One Settings object, built once at the entry point and passed down.

Nothing here reads the environment at import time; ``Settings()`` does, when
the CLI builds it.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PORT = 9909
DEFAULT_UPSTREAM = "https://api.anthropic.com"


def default_home() -> Path:
    return Path(os.path.expanduser("~")) / ".opik-cipx"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    home: Path = Field(default_factory=default_home, validation_alias="CIPX_HOME")
    host: str = Field(default="127.0.0.1", validation_alias="CIPX_HOST")
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535, validation_alias="CIPX_PORT")
    upstream_url: str = Field(default=DEFAULT_UPSTREAM, validation_alias="CIPX_UPSTREAM_URL")
    upstream_proxy: str | None = Field(default=None, validation_alias="CIPX_UPSTREAM_PROXY")
    pricing_path: Path | None = Field(default=None, validation_alias="CIPX_PRICING_PATH")
    # Seconds to wait for the upstream's response head before answering 504.
    upstream_timeout: float = Field(default=600.0, gt=0, validation_alias="CIPX_UPSTREAM_TIMEOUT")
    # Seconds in-flight streams get to finish on SIGTERM before they are cut.
    shutdown_grace: float = Field(default=10.0, ge=0, validation_alias="CIPX_SHUTDOWN_GRACE")

    @field_validator("host")
    @classmethod
    def _loopback_only(cls, value: str) -> str:
        if not is_loopback(value):
            raise ValueError(
                f"refusing to bind {value!r}: the gateway serves captured prompts and "
                "must listen on loopback only (127.0.0.1, ::1 or localhost)"
            )
        return value

    @field_validator("upstream_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"CIPX_UPSTREAM_URL must start with http:// or https://, got {value!r}")
        return value.rstrip("/")

    @field_validator("upstream_proxy")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    # Paths inside the state dir, derived so CIPX_HOME moves all of them.
    @property
    def port_file(self) -> Path:
        return self.home / "port"

    @property
    def spool_dir(self) -> Path:
        return self.home / "spool"

    @property
    def spool_path(self) -> Path:
        return self.spool_dir / "spool.sqlite3"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def pricing_file(self) -> Path:
        return self.pricing_path or (self.home / "pricing.toml")


def ensure_home(settings: Settings) -> None:
    """Create the state dir (0700: it holds captured prompts) and its subdirs."""
    for path in (settings.home, settings.spool_dir, settings.logs_dir):
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o700)
