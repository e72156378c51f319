"""Who may read captured prompts through the viewer: the per-start token, and state changes only
from our own page.

Host and Origin are checked for every ``/_cipx`` route by :mod:`opik_cipx.ops.guard`
before these rules run. The per-start token keeps out other local users' and
processes' browsers: it arrives once in the URL ``opik-cipx viewer`` prints, then
travels as an HttpOnly, SameSite=Strict cookie.
"""

from __future__ import annotations

import hmac
import secrets

from aiohttp import web

from ..ops.guard import refuse

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def check_state_change(request: web.Request) -> web.Response | None:
    """A refusal for a state-changing request that does not say it comes from our page."""
    if request.method not in SAFE_METHODS and request.headers.get("Origin") is None:
        # Browsers send Origin on every state-changing request; without one we cannot tell
        # a form another page submitted from ours, so refuse. (The guard checked its value.)
        return refuse("state-changing requests must carry this gateway's Origin")
    return None


class TokenGate:
    """The per-start secret: random, kept in memory, compared in constant time."""

    QUERY = "token"

    def __init__(self, token: str | None = None) -> None:
        self.token = token or secrets.token_urlsafe(32)
        self.port: int | None = None  # known once the gateway has bound

    @property
    def cookie(self) -> str:
        # Cookies are per host, not per port: name it by port so two gateways do not clash.
        return f"cipx_viewer_{self.port or 0}"

    def _matches(self, value: str | None) -> bool:
        return value is not None and hmac.compare_digest(value.encode(), self.token.encode())

    def from_query(self, request: web.Request) -> bool:
        return self._matches(request.query.get(self.QUERY))

    def from_cookie(self, request: web.Request) -> bool:
        return self._matches(request.cookies.get(self.cookie))

    def allows(self, request: web.Request) -> bool:
        return self.from_cookie(request) or self.from_query(request)

    def set_cookie(self, response: web.StreamResponse) -> None:
        response.set_cookie(self.cookie, self.token, path="/_cipx/", httponly=True, samesite="Strict")
