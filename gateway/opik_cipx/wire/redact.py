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
