"""What the capture chain reads of the settings, without pydantic.

The capture worker is a second interpreter that only builds, attributes and stores
calls. Importing ``Settings`` would cost it about 25 MiB of pydantic and
pydantic-settings for a dozen values its parent has already validated, so the
parent sends those values and the worker holds them in a :class:`SettingsView`.
:class:`CaptureSettings` is what both kinds of settings share: the paths derived
from ``home`` (so the state directory moves as one) and the Opik destination.
The two options the config file may change while the gateway runs
(``capture_content``, ``sample_rate``) are parsed here too, as pydantic parses
them at start-up, so a hot reload needs no model either.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

OPIK_CLOUD_URL = "https://www.comet.com/opik/api"


class CaptureSettings:
    """The values the capture chain reads, and what is derived from them.

    A base of :class:`~opik_cipx.config.Settings` (whose fields these are) and of
    :class:`SettingsView`; the annotations exist for the type checker only, so pydantic
    takes its fields from Settings' own declarations.
    """

    if TYPE_CHECKING:
        home: Path
        config_path: Path | None
        pricing_path: Path | None
        opik_base_url: str | None
        opik_api_key: str | None
        opik_workspace: str | None
        opik_project: str
        opik_debug: bool
        capture_content: bool
        sample_rate: float
        outbox_max_bytes: int

    @property
    def config_file(self) -> Path:
        return self.config_path or (self.home / "config.toml")

    @property
    def opik_url(self) -> str | None:
        """Where spans go: the configured URL, Opik Cloud when only an API key is set, else None."""
        if self.opik_base_url:
            return self.opik_base_url
        return OPIK_CLOUD_URL if self.opik_api_key else None

    # Paths inside the state dir, derived so CIPX_HOME moves all of them.
    @property
    def port_file(self) -> Path:
        return self.home / "port"

    @property
    def spool_dir(self) -> Path:
        return self.home / "spool"

    @property
    def journal_path(self) -> Path:
        return self.spool_dir / "capture.journal"

    @property
    def busy_flag_path(self) -> Path:
        return self.spool_dir / "proxy.busy"

    @property
    def spool_path(self) -> Path:
        return self.spool_dir / "spool.sqlite3"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def pricing_file(self) -> Path:
        return self.pricing_path or (self.home / "pricing.toml")


@dataclass(frozen=True, slots=True)
class SettingsView(CaptureSettings):
    """Settings' capture values as plain data: what the parent sends its capture worker."""

    home: Path
    config_path: Path | None
    pricing_path: Path | None
    opik_base_url: str | None
    opik_api_key: str | None
    opik_workspace: str | None
    opik_project: str
    opik_debug: bool
    capture_content: bool
    sample_rate: float
    outbox_max_bytes: int

    @classmethod
    def of(cls, settings: CaptureSettings) -> SettingsView:
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})


# The strings pydantic reads as a bool (lax mode, any case, no blanks around them).
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def parse_flag(value: Any) -> bool:
    """``capture_content`` as a config file may write it; ValueError names what was wrong."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, float) and value in (0.0, 1.0):
        return bool(value)
    if isinstance(value, str):
        word = value.lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise ValueError(f"capture_content: {value!r} is not a boolean (true/false, yes/no, on/off, 1/0)")


def parse_rate(value: Any) -> float:
    """``sample_rate``: a number from 0 to 1."""
    if isinstance(value, (bool, int, float)):
        rate = float(value)
    elif isinstance(value, str):
        try:
            rate = float(value.strip())
        except ValueError:
            raise ValueError(f"sample_rate: {value!r} is not a number") from None
    else:
        raise ValueError(f"sample_rate: {value!r} is not a number")
    if math.isnan(rate) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"sample_rate: {value!r} is not between 0 and 1")
    return rate


class ConfigFileError(ValueError):
    """A config file that cannot be read as TOML; ``reason`` says why, without the path."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def toml_items(path: Path, keys: Mapping[str, str]) -> dict[str, tuple[str, Any]]:
    """A ``config.toml``'s values for the fields ``keys`` names (lower-cased key -> field):
    field -> (the key as the user wrote it, e.g. ``[opik] base_url``, and its value).

    A missing file is empty; a broken one raises :class:`ConfigFileError`. Top-level
    tables (``[opik]``) are flattened, their keys tried with the table's name as a
    prefix and then as they are, so ``[opik] base_url`` means ``opik_base_url``.
    """
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except OSError as exc:
        raise ConfigFileError(path, f"cannot be read ({exc.strerror or exc})") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigFileError(path, f"is not valid TOML ({exc})") from None
    out: dict[str, tuple[str, Any]] = {}

    def put(key: str, written: str, value: Any) -> bool:
        name = keys.get(key.lower())
        if name is None:
            return False
        out[name] = (written, value)
        return True

    for key, value in doc.items():
        if isinstance(value, dict):
            for sub, subvalue in value.items():
                written = f"[{key}] {sub}"
                put(f"{key}_{sub}", written, subvalue) or put(sub, written, subvalue)
        else:
            put(key, key, value)
    return out
