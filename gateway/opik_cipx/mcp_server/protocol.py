"""JSON-RPC 2.0 as MCP uses it over stdio: one message per line in, one answer per line out.

Pure: :func:`handle_line` maps a line of input to the line to write back (or nothing, for a
notification), so the whole protocol is tested without pipes. Only what a tools-only server
needs is here: ``initialize``, ``ping``, ``tools/list``, ``tools/call``; anything else is
"method not found", as the spec asks of a server that does not offer it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# Newest first. A client asking for one of these gets it; any other gets the newest, and the
# client decides whether it can speak it (the spec's negotiation).
PROTOCOL_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603


class ToolError(Exception):
    """A tool ran and failed in a way the caller (the model) should read and can act on:
    reported as a tool result with ``isError``, not as a protocol error (MCP's rule)."""


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    input_schema: Mapping[str, Any]
    # (arguments, _meta of the call): Claude Code's meta names the tool_use it answers.
    run: Callable[[Mapping[str, Any], Mapping[str, Any]], ToolResult]

    def listing(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "inputSchema": dict(self.input_schema)}


@dataclass(frozen=True, slots=True)
class ToolResult:
    text: str
    data: Mapping[str, Any] | None = None  # also sent as structuredContent when given

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"content": [{"type": "text", "text": self.text}], "isError": False}
        if self.data is not None:
            out["structuredContent"] = dict(self.data)
        return out


@dataclass(frozen=True, slots=True)
class ServerInfo:
    name: str
    version: str
    instructions: str | None = None


class Server:
    """The dispatch table of one MCP server: its identity and its tools."""

    def __init__(self, info: ServerInfo, tools: list[Tool]) -> None:
        self.info = info
        self.tools = {t.name: t for t in tools}

    def handle_line(self, line: bytes | str) -> str | None:
        """The line to write for one line read (without its newline), or None for none."""
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        if not text.strip():
            return None
        try:
            message = json.loads(text)
        except ValueError:
            return _dump(_error(None, PARSE_ERROR, "parse error: not JSON"))
        if isinstance(message, list):  # a JSON-RPC 2.0 batch: answers for its requests only
            if not message:
                return _dump(_error(None, INVALID_REQUEST, "empty batch"))
            answers = [a for a in (self.handle(m) for m in message) if a is not None]
            return _dump(answers) if answers else None
        answer = self.handle(message)
        return None if answer is None else _dump(answer)

    def handle(self, message: Any) -> dict[str, Any] | None:
        """The answer to one decoded message; None for a notification or a client's response."""
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            return _error(_id_of(message), INVALID_REQUEST, "not a JSON-RPC 2.0 message")
        if "method" not in message:
            return None  # a response to a request of ours: this server sends none
        method = message["method"]
        if "id" not in message:
            return None  # a notification (notifications/initialized, cancelled, …): no answer
        msg_id = message["id"]
        if not isinstance(msg_id, (str, int)) or isinstance(msg_id, bool) or not isinstance(method, str):
            return _error(None, INVALID_REQUEST, "id must be a string or an integer, method a string")
        params = message.get("params")
        if params is None:
            params = {}
        if not isinstance(params, dict):
            return _error(msg_id, INVALID_PARAMS, "params must be an object")
        try:
            if method == "initialize":
                return _result(msg_id, self._initialize(params))
            if method == "ping":
                return _result(msg_id, {})
            if method == "tools/list":
                return _result(msg_id, {"tools": [t.listing() for t in self.tools.values()]})
            if method == "tools/call":
                return self._call(msg_id, params)
        except Exception as exc:  # one bad request must not end the server: logged, answered
            log.exception("mcp: %s failed", method)
            return _error(msg_id, INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
        return _error(msg_id, METHOD_NOT_FOUND, f"method not found: {method}")

    def _initialize(self, params: Mapping[str, Any]) -> dict[str, Any]:
        asked = params.get("protocolVersion")
        version = asked if asked in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[0]
        out: dict[str, Any] = {
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": self.info.name, "version": self.info.version},
        }
        if self.info.instructions:
            out["instructions"] = self.info.instructions
        return out

    def _call(self, msg_id: str | int, params: Mapping[str, Any]) -> dict[str, Any]:
        name = params.get("name")
        tool = self.tools.get(name) if isinstance(name, str) else None
        if tool is None:
            return _error(msg_id, INVALID_PARAMS, f"unknown tool: {name!r} (this server has {', '.join(self.tools)})")
        arguments = params.get("arguments")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            return _error(msg_id, INVALID_PARAMS, "arguments must be an object")
        meta = params.get("_meta")
        try:
            result = tool.run(arguments, meta if isinstance(meta, dict) else {}).to_json()
        except ToolError as exc:
            result = {"content": [{"type": "text", "text": str(exc)}], "isError": True}
        return _result(msg_id, result)


def _id_of(message: Any) -> Any:
    if isinstance(message, dict):
        msg_id = message.get("id")
        if isinstance(msg_id, (str, int)) and not isinstance(msg_id, bool):
            return msg_id
    return None


def _result(msg_id: str | int, result: Mapping[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "result": dict(result)}


def _error(msg_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}


def _dump(doc: Any) -> str:
    # One line: newline-delimited framing forbids a newline inside a message.
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
