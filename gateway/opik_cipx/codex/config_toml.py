"""Point Codex at the gateway in its ``config.toml`` text, and take that back. Pure: text in, text out.

Codex reads its base URLs only from ``config.toml`` (``openai_base_url`` for API-key use,
``chatgpt_base_url`` with a ChatGPT login); the environment variable is ignored. Edits go
through tomlkit, which round-trips a document: comments, key order, blank lines and quoting of
everything else stay byte for byte. Only top-level keys are touched.
"""

from __future__ import annotations

from collections.abc import Mapping

import tomlkit
from tomlkit.exceptions import TOMLKitError

KEYS = ("openai_base_url", "chatgpt_base_url")


class ConfigError(ValueError):
    """The existing config.toml is not valid TOML: we leave it alone."""


def _parse(text: str) -> tomlkit.TOMLDocument:
    try:
        return tomlkit.parse(text)
    except TOMLKitError as exc:
        raise ConfigError(f"config.toml is not valid TOML: {exc}") from exc


def current(text: str) -> dict[str, str | None]:
    """The values of our keys as the file has them now (None when absent)."""
    doc = _parse(text)
    return {key: (str(doc[key]) if key in doc else None) for key in KEYS}


def wire_text(text: str, values: Mapping[str, str]) -> str:
    """``text`` with each of ``values`` set at top level; everything else as it was.

    A key already there is replaced where it stands; a new one goes after the last top-level
    key, before the first table (tomlkit places it so), never inside a table.
    """
    doc = _parse(text)
    for key, value in values.items():
        doc[key] = value
    return doc.as_string()


def unwire_text(text: str, previous: Mapping[str, str | None], ours: Mapping[str, str]) -> str:
    """Take our keys back out of a file the user may have edited since: a key still holding our
    value returns to its ``previous`` value (removed when there was none); keys the user changed
    since are theirs now and stay."""
    doc = _parse(text)
    for key, value in ours.items():
        if key not in doc or str(doc[key]) != value:
            continue
        before = previous.get(key)
        if before is None:
            del doc[key]
        else:
            doc[key] = before
    return doc.as_string()
