"""Settings built from whatever the user wrote, never failing on one bad value.

The Settings class validates; this module decides what a bad value means. Every
command can then run with any configuration (``stop``, ``logs``, ``uninstall`` most of
all), the gateway keeps relaying when an Opik setting is wrong, and the messages name
the variable, or the file and key, that the user actually set, in plain words.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .config import (
    IGNORE_CONFIG_TOML,
    ConfigFileError,
    OpikConfigIniSource,
    Settings,
    config_toml_items,
    config_toml_path,
    opik_config_path,
    read_opik_config,
)

# Settings that decide what leaves the machine and where: when one of them is unusable the
# gateway keeps proxying and keeping every call locally, and ships nothing until it is fixed.
SHIPPING_FIELDS = frozenset({
    "opik_base_url", "opik_api_key", "opik_workspace", "opik_project", "opik_debug", "capture_content",
    "sample_rate", "sentry", "sentry_dsn", "outbox_max_bytes", "ship_batch_bytes", "config_path",
})
_SECRET_FIELDS = frozenset({"opik_api_key", "sentry_dsn"})
# Settings that delete data: a value that cannot be read turns pruning off (never the default,
# which could delete what the user meant to keep), and never stops the gateway from starting.
RETENTION_FIELDS = {"retention_days": 0, "spool_max_mb": 0}


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One setting that could not be used: where the user set it, and why, in plain words."""

    origin: str  # "CIPX_PORT", "~/.opik.config: url_override", "~/.opik-cipx/config.toml: [opik] base_url"
    message: str
    shipping: bool  # True: the gateway runs local-only because of it

    def __str__(self) -> str:
        return f"{self.origin}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {"origin": self.origin, "message": self.message, "shipping": self.shipping}


class ConfigError(Exception):
    """The configuration cannot run the command; ``problems`` say what to fix."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("; ".join(map(str, problems)))
        self.problems = problems


def load_settings(strict: bool = False, **init: Any) -> Settings:
    """Settings from the environment and the config files, never failing on a bad value.

    Each unusable value is set aside (its default used instead) and reported in
    ``settings.config_problems``. A bad shipping setting also drops the Opik destination,
    so the gateway still relays and records every call but sends nothing anywhere.
    With ``strict``, a bad value of any other setting (port, upstream, ...) raises
    :class:`ConfigError` instead: a gateway must not run on a port nobody asked for.
    """
    problems: list[ConfigProblem] = []
    overrides: dict[str, Any] = {}
    ignore_toml = False
    for _ in range(len(Settings.model_fields) + 2):  # each round sets at least one value aside
        token = IGNORE_CONFIG_TOML.set(ignore_toml)
        try:
            settings = Settings(**{**init, **overrides})
        except ValidationError as exc:
            for err in exc.errors():
                field = _field_of(err.get("loc", ()))
                if field is None or field in overrides:
                    continue
                problems.append(_problem(field, err))
                overrides[field] = Settings.model_fields[field].get_default(call_default_factory=True)
                if field in SHIPPING_FIELDS:
                    overrides.update(opik_base_url=None, opik_api_key=None, sentry="off")
            if RETENTION_FIELDS.keys() & overrides.keys():
                overrides.update(RETENTION_FIELDS)  # after the loop, so every bad one was reported
            continue
        except ConfigFileError as exc:
            if ignore_toml:
                raise
            ignore_toml = True
            # Unknown contents may include privacy settings: ship nothing while it is broken.
            overrides.update(opik_base_url=None, opik_api_key=None, sentry="off")
            reason = f"{exc.reason}; the whole file is ignored and nothing is shipped to Opik until it is fixed"
            problems.append(ConfigProblem(display_path(exc.path), reason, shipping=True))
            continue
        finally:
            IGNORE_CONFIG_TOML.reset(token)
        lenient = {_origin(f) for f in RETENTION_FIELDS if f in overrides}
        core = [p for p in problems if not p.shipping and p.origin not in lenient]
        if strict and core:
            raise ConfigError(core)
        settings._problems = problems
        return settings
    raise ConfigError(problems)  # pragma: no cover - every round removes a value


def _field_of(loc: tuple[Any, ...]) -> str | None:
    if not loc:
        return None
    key = str(loc[0])
    if key in Settings.model_fields:
        return key
    for name, info in Settings.model_fields.items():
        if isinstance(info.validation_alias, str) and info.validation_alias.lower() == key.lower():
            return name
    return None


def _problem(field: str, err: Any) -> ConfigProblem:
    message = _plain(err)
    value = err.get("input")
    if field not in _SECRET_FIELDS and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        message += f" (it is {value!r})"
    if field in SHIPPING_FIELDS:
        message += "; Opik shipping is off until it is fixed (calls are still relayed and kept locally)"
    if field in RETENTION_FIELDS:
        message += "; pruning is off until it is fixed (nothing is deleted)"
    return ConfigProblem(_origin(field), message, shipping=field in SHIPPING_FIELDS)


def _plain(err: Any) -> str:
    """pydantic's error, said the way a person would say it."""
    kind, ctx = err.get("type", ""), err.get("ctx") or {}
    if kind == "value_error" and ctx.get("error") is not None:
        return str(ctx["error"])
    bounds = {"greater_than_equal": ("ge", "must be at least"), "less_than_equal": ("le", "must be at most"),
              "greater_than": ("gt", "must be more than"), "less_than": ("lt", "must be less than")}
    if kind in bounds:
        key, words = bounds[kind]
        bound = ctx.get(key)
        return f"{words} {int(bound) if isinstance(bound, float) and bound.is_integer() else bound}"
    if kind.startswith("int_"):
        return "must be a whole number"
    if kind.startswith("float_"):
        return "must be a number"
    if kind.startswith("bool_"):
        return "must be true or false (1/0, yes/no, on/off also work)"
    if kind.startswith(("string_", "path_")):
        return "must be text"
    return "is not a usable value"


def _origin(field: str) -> str:
    """Where the value that won came from, named as the user wrote it (sources in priority order)."""
    alias = Settings.model_fields[field].validation_alias
    by_upper = {k.upper(): k for k in os.environ}
    if isinstance(alias, str) and alias.upper() in by_upper:
        return by_upper[alias.upper()]
    cc = {"opik_workspace": "OPIK_CC_WORKSPACE", "opik_project": "OPIK_CC_PROJECT"}.get(field)
    if cc and os.environ.get(cc):
        return cc
    path = config_toml_path({})
    try:
        written = config_toml_items(path, Settings).get(field)
    except ConfigFileError:
        written = None
    if written is not None:
        return f"{display_path(path)}: {written[0]}"
    for key, name in OpikConfigIniSource._KEYS.items():
        if name == field and read_opik_config(opik_config_path()).get(key):
            return f"{display_path(opik_config_path())}: {key}"
    return alias if isinstance(alias, str) else field


def display_path(path: Path) -> str:
    """``path`` with the home directory shown as ``~``, as people write it."""
    home = os.path.expanduser("~")
    text = str(path)
    return "~" + text[len(home):] if home not in ("", "/") and text.startswith(home + os.sep) else text
