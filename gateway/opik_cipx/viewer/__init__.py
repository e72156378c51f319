"""The local web UI: captures list, capture detail, session view, and their JSON API.

Served by the gateway itself under ``/_cipx/`` on its loopback listener. The
page is plain HTML/CSS/JS from ``static/`` (no build step, no CDN) and a
Content-Security-Policy keeps it from fetching anything but this gateway.
``Host``/``Origin`` are checked for every ``/_cipx`` route by the gateway's
guard (``ops/guard.py``); the viewer's routes also need the per-start token
(``security.py``). Every spool read runs on the spool's thread.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from ..ops.guard import refuse
from ..ops.state import STATE_KEY
from . import insights_api, queries
from .security import TokenGate, check_state_change

PREFIX = "/_cipx"
VIEWER = f"{PREFIX}/viewer/"
TOKEN_FILE = "viewer-token"
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The page may talk to this gateway only: no CDN, no third-party fetches, no framing.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
       " base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
TOKEN_KEY: web.AppKey[TokenGate] = web.AppKey("viewer_token")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def token_path(home: Path) -> Path:
    return Path(home) / TOKEN_FILE


def viewer_url(port: int, token: str, host: str = "127.0.0.1") -> str:
    name = f"[{host}]" if ":" in host else host
    return f"http://{name}:{port}{VIEWER}?token={token}"


def read_token(home: Path) -> str | None:
    """The running gateway's viewer token, from the 0600 file it writes at start."""
    try:
        return token_path(home).read_text().strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def setup_viewer(app: web.Application) -> TokenGate:
    """Add the viewer and its API (the app holds the gateway's state under ``STATE_KEY``);
    call before any catch-all route. Returns the token gate."""
    gateway = app[STATE_KEY]
    gate = TokenGate()
    app[TOKEN_KEY] = gate
    home = gateway.settings.home
    # Written before the listener opens; the CLI pairs it with the port file for the URL.
    _write_private(token_path(home), gate.token + "\n")

    async def forget_token(_: web.Application) -> None:
        try:
            if read_token(home) == gate.token:  # a newer gateway's file is not ours to remove
                token_path(home).unlink()
        except FileNotFoundError:
            pass

    app.on_cleanup.append(forget_token)
    statics = {name: (_static(name), ctype) for name, ctype in STATIC_FILES.items()}

    def guarded(handler: Handler, *, page: bool = False) -> Handler:
        async def wrapper(request: web.Request) -> web.StreamResponse:
            gate.port = gateway.port
            refused = check_state_change(request)
            if refused is not None:
                return refused
            if page and gate.from_query(request):
                # Trade the URL token for the cookie at once, so it leaves the address bar
                # and the history; the fragment (#/call/…) survives the redirect.
                redirect = web.Response(status=303, headers={"Location": request.path})
                gate.set_cookie(redirect)
                redirect.headers.update(SECURITY_HEADERS)
                return redirect
            if not gate.allows(request):
                return refuse("missing or stale viewer token: open the URL `opik-cipx viewer` prints", 401)
            response = await handler(request)
            for k, v in SECURITY_HEADERS.items():
                response.headers.setdefault(k, v)
            return response

        return wrapper

    def spool_or_503() -> Any:
        if gateway.spool is None:
            raise web.HTTPServiceUnavailable(text="the spool is not open")
        return gateway.spool

    def json_bytes(data: bytes, status: int = 200) -> web.Response:
        return web.Response(body=data, status=status, content_type="application/json")

    async def index(request: web.Request) -> web.StreamResponse:
        body, ctype = statics["index.html"]
        return web.Response(body=body, headers={"Content-Type": ctype})

    async def static(request: web.Request) -> web.StreamResponse:
        found = statics.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        return web.Response(body=found[0], headers={"Content-Type": found[1]})

    async def bare(request: web.Request) -> web.StreamResponse:
        return web.Response(status=308, headers={"Location": VIEWER})

    async def calls(request: web.Request) -> web.StreamResponse:
        q = request.query
        try:
            limit = int(q.get("limit", "100"))
        except ValueError:
            return refuse("limit must be an integer", 400)
        spool = spool_or_503()
        try:
            page = await spool.run(lambda sp: queries.list_calls(
                sp.conn, limit=limit, cursor=q.get("cursor") or None, session_id=q.get("session") or None,
                model=q.get("model") or None, kind=q.get("kind") or None))
        except queries.BadRequest as exc:
            return refuse(str(exc), 400)
        return web.json_response(page)

    async def call(request: web.Request) -> web.StreamResponse:
        exchange_id = request.match_info["id"]
        prices = gateway.prices
        data = await spool_or_503().run(lambda sp: queries.call_detail(sp, exchange_id, prices))
        if data is None:
            return refuse(f"no stored call {exchange_id}", 404)
        return json_bytes(data)

    async def body(request: web.Request) -> web.StreamResponse:
        exchange_id = request.match_info["id"]
        data = await spool_or_503().run(lambda sp: queries.request_body(sp, exchange_id))
        if data is None:
            return refuse(f"no stored call {exchange_id}", 404)
        return web.Response(body=data, content_type="application/octet-stream")

    async def reattribute(request: web.Request) -> web.StreamResponse:
        exchange_id = request.match_info["id"]
        prices = gateway.prices
        result = await spool_or_503().run(lambda sp: queries.reattribute(sp, exchange_id, prices))
        if result is None:
            return refuse(f"no stored LLM call {exchange_id}", 404)
        return web.json_response(result)

    async def sessions(request: web.Request) -> web.StreamResponse:
        return web.json_response(await spool_or_503().run(lambda sp: queries.sessions(sp.conn)))

    async def session(request: web.Request) -> web.StreamResponse:
        session_id = request.match_info["id"]
        data = await spool_or_503().run(lambda sp: queries.session_detail(sp.conn, session_id))
        if data is None:
            return refuse(f"no calls in session {session_id}", 404)
        return json_bytes(json.dumps(data, separators=(",", ":")).encode())

    async def filters(request: web.Request) -> web.StreamResponse:
        return web.json_response(await spool_or_503().run(lambda sp: queries.filters(sp.conn)))

    async def insights(request: web.Request) -> web.StreamResponse:
        name = request.query.get("window", "month")
        prices = gateway.prices
        try:
            data = await spool_or_503().run(lambda sp: insights_api.insights_report(sp.conn, prices, name))
        except queries.BadRequest as exc:
            return refuse(str(exc), 400)
        data["plan"] = gateway.plan_windows()  # the latest rate-limit windows the upstream reported
        return web.json_response(data)

    async def growth(request: web.Request) -> web.StreamResponse:
        session_id = request.match_info["id"]
        data = await spool_or_503().run(lambda sp: insights_api.context_growth(sp.conn, session_id))
        if data is None:
            return refuse(f"no calls in session {session_id}", 404)
        return web.json_response(data)

    r = app.router
    r.add_get(f"{PREFIX}/viewer", guarded(bare, page=True), allow_head=False)
    r.add_get(VIEWER, guarded(index, page=True), allow_head=False)
    r.add_get(VIEWER + "static/{name}", guarded(static), allow_head=False)
    r.add_get(f"{PREFIX}/api/calls", guarded(calls), allow_head=False)
    r.add_get(f"{PREFIX}/api/calls/{{id}}", guarded(call), allow_head=False)
    r.add_get(f"{PREFIX}/api/calls/{{id}}/body", guarded(body), allow_head=False)
    r.add_post(f"{PREFIX}/api/calls/{{id}}/reattribute", guarded(reattribute))
    r.add_get(f"{PREFIX}/api/sessions", guarded(sessions), allow_head=False)
    r.add_get(f"{PREFIX}/api/sessions/{{id}}", guarded(session), allow_head=False)
    r.add_get(f"{PREFIX}/api/filters", guarded(filters), allow_head=False)
    r.add_get(f"{PREFIX}/api/insights", guarded(insights), allow_head=False)
    r.add_get(f"{PREFIX}/api/sessions/{{id}}/growth", guarded(growth), allow_head=False)
    return gate


__all__ = ["TOKEN_KEY", "read_token", "setup_viewer", "token_path", "viewer_url"]
