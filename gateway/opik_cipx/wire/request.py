"""Facts read straight off a request body's bytes, without parsing the whole JSON document."""

from __future__ import annotations

import json
import re

_USER_ID = re.compile(rb'"user_id"\s*:\s*"((?:[^"\\]|\\.)*)"')
_MODEL = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.)*)"')
_OLD_SESSION = re.compile(r"session_([0-9a-fA-F-]{36})")
_SPEED = re.compile(rb'"speed"\s*:\s*"(\w+)"')


def _json_string(raw: bytes) -> str | None:
    try:
        value = json.loads(b'"' + raw + b'"')
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def session_from_body(body: bytes) -> str | None:
    """``metadata.user_id``'s session: a JSON string today, ``user_.._session_<uuid>`` before."""
    # Claude Code sends "metadata" after the messages, near the end of a body that may be
    # megabytes long: looking from the end first finds it in microseconds.
    last = body.rfind(b'"user_id"')
    if last == -1:
        return None
    match = _USER_ID.match(body, last) or _USER_ID.search(body)
    if match is None:
        return None
    user_id = _json_string(match.group(1))
    if not user_id:
        return None
    try:
        parsed = json.loads(user_id)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("session_id"), str):
        return parsed["session_id"] or None
    old = _OLD_SESSION.search(user_id)
    return old.group(1) if old else None


def model_from_body(body: bytes) -> str | None:
    # Claude Code puts "model" first; any "model" inside messages comes later in the body.
    match = _MODEL.search(body)
    return _json_string(match.group(1)) if match else None



def speed_from_body(body: bytes) -> str | None:
    """The request's ``speed`` setting (e.g. ``fast``), when the response's usage does not say."""
    match = _SPEED.search(body)
    return match.group(1).decode("ascii", "replace") if match else None
