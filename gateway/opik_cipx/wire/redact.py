"""Pure redaction: secrets never leave the proxy's memory.

Header values that authenticate the user are removed before an Exchange is
built, so they can never reach the spool, a log, the viewer or Opik.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

# Exact names first; the pattern catches vendor variants (x-goog-api-key, x-auth-token...).
SECRET_HEADERS = frozenset(
    {"x-api-key", "authorization", "proxy-authorization", "cookie", "set-cookie", "set-cookie2"}
)
_SECRET_NAME = re.compile(r"api[-_]?key|auth|token|secret|password|cookie|session-key", re.I)
# Names that match the pattern but carry no secret: rate-limit counters and ids.
_KEEP_PREFIXES = ("anthropic-ratelimit-", "x-claude-code-")


@functools.lru_cache(maxsize=1024)  # names repeat on every call; bounded, as clients choose them
def is_secret_header(name: str | bytes) -> bool:
    """Whether a header of this name carries a credential; bytes are names as read off the wire."""
    if isinstance(name, bytes):
        name = name.decode("latin-1")
    low = name.lower()
    if low in SECRET_HEADERS:
        return True
    return not low.startswith(_KEEP_PREFIXES) and _SECRET_NAME.search(low) is not None


def redact_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Lower-cased header dict without secrets; repeated headers joined with ", "."""
    out: dict[str, str] = {}
    for name, value in headers:
        low = name.lower()
        if is_secret_header(low):
            continue
        out[low] = f"{out[low]}, {value}" if low in out else value
    return out


# Which kind of credential a call carried is kept (never the credential): a subscription
# login is billed by plan, not per token, so its cost is an API list price to label as such.
CREDENTIAL_HEADER = "x-cipx-credential"  # stored beside the redacted request headers
API_KEY, OAUTH, BEARER, NO_CREDENTIAL = "api_key", "oauth", "bearer", "none"
CREDENTIAL_KINDS = frozenset({API_KEY, OAUTH, BEARER, NO_CREDENTIAL})


def credential_kind(headers: Iterable[tuple[str | bytes, str | bytes]]) -> str:
    """``api_key`` | ``oauth`` (a subscription login) | ``bearer`` (a token of unknown kind) | ``none``.

    Anthropic API keys start ``sk-ant-api`` and come as ``x-api-key`` (or, through
    ``ANTHROPIC_AUTH_TOKEN``, as a bearer); Claude Code's subscription login sends a
    ``sk-ant-oat`` bearer with the ``oauth-…`` beta; Codex's ChatGPT login sends a bearer
    with ``chatgpt-account-id``; an OpenAI key is an ``sk-`` bearer. Only the kind leaves
    here. A journal replay carries the kind recorded before its credentials were dropped.
    """
    seen: dict[str, str] = {}
    for name, value in headers:
        low = (name.decode("latin-1") if isinstance(name, bytes) else name).lower()
        seen[low] = value.decode("latin-1") if isinstance(value, bytes) else value
    if "x-api-key" in seen:
        return API_KEY
    auth = seen.get("authorization", "").strip()
    if auth[:7].lower() == "bearer ":
        token = auth[7:].strip()
        if token.startswith("sk-ant-oat") or "chatgpt-account-id" in seen or "oauth-" in seen.get("anthropic-beta", ""):
            return OAUTH
        if token.startswith("sk-"):
            return API_KEY
        return BEARER
    recorded = seen.get(CREDENTIAL_HEADER)
    return recorded if recorded in CREDENTIAL_KINDS else NO_CREDENTIAL
