"""Who may read captured prompts through the viewer: loopback names, same origin, the token.

The gateway already binds loopback only, but a web page the user visits can
still reach 127.0.0.1 through DNS rebinding (its own name re-pointed at
127.0.0.1): the browser then sends that name in ``Host``, so only loopback
names with our port pass. ``Origin`` is checked wherever it is sent, and must
be present and ours on anything that changes state. The per-start token keeps
out other local users' and processes' browsers: it arrives once in the URL
``opik-cipx viewer`` prints, then travels as an HttpOnly, SameSite=Strict
cookie.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from aiohttp import web

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def allowed_hosts(port: int | None) -> frozenset[str]:
    """``Host`` values that name this gateway: a loopback name with its port."""
    names = {f"{name}:{port}" for name in LOOPBACK_NAMES} if port else set()
    if port == 80:  # a browser omits the default port
        names.update(LOOPBACK_NAMES)
    return frozenset(names)


def host_allowed(request: web.Request, port: int | None) -> bool:
    host = request.headers.get("Host")
    return host is not None and host.strip().lower() in allowed_hosts(port)


def origin_allowed(origin: str, port: int | None) -> bool:
    parts = urlsplit(origin.strip().lower())
    return parts.scheme == "http" and not parts.path and parts.netloc in allowed_hosts(port)


def refuse(reason: str, status: int = 403) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers={"Cache-Control": "no-store"})


def check_request(request: web.Request, port: int | None) -> web.Response | None:
    """A refusal for requests that do not come from our own loopback origin; None when fine."""
    if not host_allowed(request, port):
        return refuse("foreign Host header: the viewer answers only to 127.0.0.1, localhost or [::1]")
    origin = request.headers.get("Origin")
    if origin is not None and not origin_allowed(origin, port):
        return refuse("cross-origin request refused")
    if request.method not in SAFE_METHODS and origin is None:
        # Browsers send Origin on every state-changing request; without one we cannot tell
        # a form another page submitted from ours, so refuse.
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
