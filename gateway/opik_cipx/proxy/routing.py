"""Which upstream a request goes to: Anthropic, the OpenAI API, or the ChatGPT backend.

One loopback port serves both clients. Codex's calls are told apart from Claude Code's by
what only they carry: the Responses path, the ChatGPT backend's path prefix, or Codex's own
headers (``originator``, ``openai-beta``) on any other path (``/v1/models`` is both APIs'). A
request without any of those goes to Anthropic, as before this routing existed. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Upstream(StrEnum):
    ANTHROPIC = "anthropic"
    OPENAI = "openai"
    CHATGPT = "chatgpt"


_OPENAI_HEADERS = frozenset({b"originator", b"openai-beta", b"openai-organization", b"openai-project"})
_ANTHROPIC_HEADERS = frozenset({b"anthropic-version", b"x-api-key", b"anthropic-beta"})
CHATGPT_PREFIX = b"/backend-api/"


def route(target: bytes, headers: Iterable[tuple[bytes, bytes]]) -> Upstream:
    """The upstream for a request line's target and its headers."""
    bare = target.split(b"?", 1)[0]
    if bare.startswith(CHATGPT_PREFIX):
        return Upstream.CHATGPT
    if bare == b"/v1/responses" or bare.startswith(b"/v1/responses/"):
        return Upstream.OPENAI
    if bare.startswith(b"/v1/messages"):
        return Upstream.ANTHROPIC
    openai = False
    for name, _value in headers:
        low = name.lower()
        if low in _ANTHROPIC_HEADERS:
            return Upstream.ANTHROPIC
        if low in _OPENAI_HEADERS:
            openai = True
    return Upstream.OPENAI if openai else Upstream.ANTHROPIC

