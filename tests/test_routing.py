"""Which upstream each request goes to (proxy/routing.py)."""

from __future__ import annotations

import pytest

from opik_cipx.proxy.routing import Upstream, route


@pytest.mark.parametrize(("target", "headers", "expected"), [
    (b"/v1/messages?beta=true", [(b"x-api-key", b"k")], Upstream.ANTHROPIC),
    (b"/v1/messages", [(b"originator", b"codex_exec")], Upstream.ANTHROPIC),  # the path decides first
    (b"/v1/responses", [], Upstream.OPENAI),
    (b"/v1/responses/resp_1/cancel", [], Upstream.OPENAI),
    (b"/backend-api/codex/responses", [(b"Authorization", b"Bearer x")], Upstream.CHATGPT),
    (b"/v1/models", [(b"Originator", b"codex_exec")], Upstream.OPENAI),
    (b"/v1/models", [(b"anthropic-version", b"2023-06-01")], Upstream.ANTHROPIC),
    (b"/v1/models", [], Upstream.ANTHROPIC),  # nothing says Codex: as before routing existed
    (b"/", [(b"user-agent", b"curl")], Upstream.ANTHROPIC),
])
def test_route(target: bytes, headers: list[tuple[bytes, bytes]], expected: Upstream) -> None:
    assert route(target, headers) is expected
