"""``opik-cipx mcp serve``: a stdio MCP server so Claude itself can answer "what did this
session cost, and why" -- tools ``session_cost``, ``insights`` and ``explain_call`` over the
spool, read-only, whether the gateway is up or down.

Written here on JSON-RPC 2.0 rather than with the official ``mcp`` SDK: three tools need
``initialize``, ``tools/list`` and ``tools/call`` only, and the SDK costs about a second of
import per session start and 6 MB of dependencies in the frozen build (README, "MCP server").
Named ``mcp_server`` so it never shadows the SDK's ``mcp`` package.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .protocol import Server, ServerInfo, Tool, ToolError, ToolResult
from .tools import SESSION_ENV, Context, make_tools

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["SESSION_ENV", "Context", "Server", "ServerInfo", "Tool", "ToolError", "ToolResult", "build", "serve"]

# No server instructions: Claude Code sends them in every request of every session (the
# "# MCP Server Instructions" section); the tools' own descriptions say enough.


def build(settings: Settings, env: Mapping[str, str]) -> Server:
    from .. import __version__
    from ..ops import daemon
    from ..pricing import PriceTable, PricingFileError
    from .settle import settle

    try:
        prices = PriceTable.load(settings.pricing_file)
    except PricingFileError as exc:
        print(f"opik-cipx mcp: ignoring pricing overrides: {exc}", file=sys.stderr)
        prices = PriceTable.builtin()

    def settled() -> bool:
        live = daemon.probe(settings)
        if live.state is daemon.State.STOPPED:
            return True  # nothing is capturing: the spool is as complete as it will get
        port = live.port
        if port is None:
            return False
        return settle(lambda: daemon.get_json(port, "/_cipx/status", timeout=1.0))

    def up() -> bool:
        return daemon.probe(settings).state is daemon.State.RUNNING

    ctx = Context(settings.spool_path, session_id=env.get(SESSION_ENV), prices=prices, settle=settled,
                  gateway_up=up)
    return Server(ServerInfo("opik-cipx", __version__), make_tools(ctx))


def serve(settings: Settings) -> int:
    from .stdio import run

    return run(build(settings, os.environ), sys.stdin.buffer, sys.stdout.buffer)
