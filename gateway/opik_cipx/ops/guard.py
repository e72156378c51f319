"""One guard in front of every ``/_cipx`` route: loopback Host, our own Origin.

The gateway binds loopback only, but a page the user visits can still reach
127.0.0.1 through DNS rebinding (its own name re-pointed at 127.0.0.1): the
browser then sends that name in ``Host``, so only loopback names with our port
pass. ``Origin`` is checked wherever it is sent. Route-specific rules (the
viewer's token, the admin routes refusing browsers outright) come after this.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from .state import state_of

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
    """A refusal for a request that does not come from our own loopback origin; None when fine."""
    if not host_allowed(request, port):
        return refuse("foreign Host header: the gateway answers only to 127.0.0.1, localhost or [::1] with its port")
    origin = request.headers.get("Origin")
    if origin is not None and not origin_allowed(origin, port):
        return refuse("cross-origin request refused")
    return None


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request on the app passes here first; the app serves nothing but ``/_cipx``."""
    refused = check_request(request, state_of(request).port)
    if refused is not None:
        return refused
    return await handler(request)
