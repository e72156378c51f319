"""A local fake of the OpenAI Responses API, over HTTP+SSE and over WebSocket.

Speaks what Codex CLI expects: ``POST /v1/responses`` answered with an SSE stream, and
``GET /v1/responses`` upgraded to a WebSocket (``permessage-deflate`` accepted when offered)
on which each ``response.create`` text frame is answered with the same events as JSON text
frames. Answers follow a script of :class:`Answer` s (a text, or a function call such as a
shell command) with exact, scripted usage in ``response.completed``, so tests can compare
what the gateway captured with what the fake sent.

Used in-process (``async with FakeResponses(script) as fake``) and standalone
(``python -m tests.support.fake_responses``) inside a network namespace next to the real
Codex CLI, where it records every request to a directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

DEFAULT_MODEL = "gpt-5.1-codex"


@dataclass
class Answer:
    """One scripted answer to one generating request (warm-ups are answered apart)."""

    text: str = "ok"
    # A function call instead of (before) text: (tool name, arguments object).
    call: tuple[str, dict[str, Any]] | None = None
    # A custom (freeform) tool call instead: (tool name, input text). Codex's shell access is the
    # custom ``exec`` tool, whose input is JavaScript calling ``tools.exec_command``.
    custom: tuple[str, str] | None = None
    input_tokens: int = 1200
    cached_tokens: int = 1000
    output_tokens: int = 40
    reasoning_tokens: int = 8
    model: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Answer:
        values = dict(data)
        if values.get("call") is not None:
            name, args = values["call"]
            values["call"] = (str(name), dict(args))
        if values.get("custom") is not None:
            name, text = values["custom"]
            values["custom"] = (str(name), str(text))
        return cls(**values)

    def usage(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.input_tokens + self.output_tokens,
        }


@dataclass
class Recorded:
    """One request as the fake received it: an HTTP POST body or one WebSocket text frame."""

    transport: str  # "http" or "ws"
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    answer: Answer | None = None  # None for a warm-up
    extensions: str = ""  # the negotiated Sec-WebSocket-Extensions (ws only)
    sent: list[dict[str, Any]] = field(default_factory=list)  # the events answered

    def json(self) -> Any:
        return json.loads(self.body)


def answer_events(answer: Answer | None, request: Mapping[str, Any], response_id: str,
                  model: str) -> list[dict[str, Any]]:
    """The Responses events for one answer, ``response.created`` to ``response.completed``."""
    base = {"id": response_id, "object": "response", "created_at": 1765000000, "model": model,
            "previous_response_id": request.get("previous_response_id")}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": {**base, "status": "in_progress", "output": []}},
        {"type": "response.in_progress", "response": {**base, "status": "in_progress", "output": []}},
    ]
    output: list[dict[str, Any]] = []
    if answer is not None:
        if answer.custom is not None:
            name, text = answer.custom
            item = {"type": "custom_tool_call", "id": f"ctc_{response_id}", "call_id": f"call_{response_id}",
                    "name": name, "input": text, "status": "completed"}
            events.append({"type": "response.output_item.added", "output_index": 0,
                           "item": {**item, "input": "", "status": "in_progress"}})
            events.append({"type": "response.custom_tool_call_input.delta", "output_index": 0,
                           "item_id": item["id"], "delta": text})
            events.append({"type": "response.custom_tool_call_input.done", "output_index": 0,
                           "item_id": item["id"], "input": text})
            events.append({"type": "response.output_item.done", "output_index": 0, "item": item})
            output.append(item)
        elif answer.call is not None:
            name, args = answer.call
            item = {"type": "function_call", "id": f"fc_{response_id}", "call_id": f"call_{response_id}",
                    "name": name, "arguments": json.dumps(args), "status": "completed"}
            events.append({"type": "response.output_item.added", "output_index": 0,
                           "item": {**item, "arguments": "", "status": "in_progress"}})
            events.append({"type": "response.function_call_arguments.delta", "output_index": 0,
                           "item_id": item["id"], "delta": item["arguments"]})
            events.append({"type": "response.function_call_arguments.done", "output_index": 0,
                           "item_id": item["id"], "arguments": item["arguments"]})
            events.append({"type": "response.output_item.done", "output_index": 0, "item": item})
            output.append(item)
        else:
            msg_id = f"msg_{response_id}"
            events.append({"type": "response.output_item.added", "output_index": 0,
                           "item": {"type": "message", "id": msg_id, "role": "assistant",
                                    "status": "in_progress", "content": []}})
            for n in range(0, len(answer.text), 16):
                events.append({"type": "response.output_text.delta", "output_index": 0, "content_index": 0,
                               "item_id": msg_id, "delta": answer.text[n:n + 16]})
            item = {"type": "message", "id": msg_id, "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": answer.text, "annotations": []}]}
            events.append({"type": "response.output_item.done", "output_index": 0, "item": item})
            output.append(item)
    done: dict[str, Any] = {**base, "status": "completed", "output": output}
    if answer is not None:
        done["usage"] = answer.usage()
    events.append({"type": "response.completed", "response": done})
    for n, event in enumerate(events):
        event["sequence_number"] = n
    return events


class FakeResponses:
    """The fake server. ``websocket=False`` answers upgrades 426 (Codex falls back to HTTP at once)."""

    def __init__(self, script: Sequence[Answer] = (), *, websocket: bool = True,
                 record_dir: Path | None = None, default: Answer | None = None) -> None:
        self.script = list(script)
        self.default = default or Answer(text="done")
        self.websocket = websocket
        self.record_dir = record_dir
        self.requests: list[Recorded] = []
        self.upgrades: list[list[tuple[str, str]]] = []  # the headers of every upgrade attempt
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _next_answer(self, body: Mapping[str, Any]) -> Answer | None:
        if body.get("generate") is False:
            return None  # a warm-up: no output, no usage
        return self.script.pop(0) if self.script else self.default

    def _record(self, rec: Recorded) -> None:
        self.requests.append(rec)
        if self.record_dir is None:
            return
        self.record_dir.mkdir(parents=True, exist_ok=True)
        stem = self.record_dir / f"{len(self.requests):03d}"
        stem.with_suffix(".body").write_bytes(rec.body)
        meta = {"transport": rec.transport, "path": rec.path, "headers": rec.headers,
                "extensions": rec.extensions, "warmup": rec.answer is None, "sent": rec.sent}
        stem.with_suffix(".json").write_text(json.dumps(meta, indent=1))

    def _events(self, body: bytes) -> tuple[Answer | None, list[dict[str, Any]]]:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = {}
        parsed = parsed if isinstance(parsed, dict) else {}
        answer = self._next_answer(parsed)
        model = (answer.model if answer and answer.model else None) or str(parsed.get("model") or DEFAULT_MODEL)
        return answer, answer_events(answer, parsed, f"resp_{next(self._ids):04d}", model)

    async def _post(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        answer, events = self._events(body)
        rec = Recorded("http", request.path_qs, list(request.headers.items()), body, answer, sent=events)
        self._record(rec)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for event in events:
            await resp.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
        await resp.write_eof()
        return resp

    async def _get(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return web.json_response({"error": {"message": "use POST"}}, status=405)
        self.upgrades.append(list(request.headers.items()))
        if not self.websocket:
            return web.json_response({"error": {"message": "websocket disabled in this fake"}}, status=426)
        ws = web.WebSocketResponse(compress=True, max_msg_size=0)
        await ws.prepare(request)
        extensions = ws.headers.get("Sec-WebSocket-Extensions", "")
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            body = msg.data.encode()
            answer, events = self._events(body)
            self._record(Recorded("ws", request.path_qs, list(request.headers.items()), body, answer,
                                  extensions=extensions, sent=events))
            for event in events:
                await ws.send_str(json.dumps(event))
        return ws

    async def _other(self, request: web.Request) -> web.Response:
        body = await request.read()
        self._record(Recorded("http", request.path_qs, list(request.headers.items()), body, None))
        return web.json_response({"object": "list", "data": []})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3)
        app.router.add_post("/v1/responses", self._post)
        app.router.add_get("/v1/responses", self._get)
        app.router.add_route("*", "/{tail:.*}", self._other)
        return app

    async def start(self, port: int = 0) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        server = site._server
        assert server is not None
        sock: socket.socket = server.sockets[0]  # type: ignore[attr-defined]
        self.port = int(sock.getsockname()[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeResponses:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def load_recorded(record_dir: Path) -> list[dict[str, Any]]:
    """What a standalone fake recorded, in arrival order: the meta dicts with ``body`` (bytes) added."""
    out = []
    for meta_path in sorted(record_dir.glob("[0-9]*.json")):
        meta = json.loads(meta_path.read_text())
        meta["body"] = meta_path.with_suffix(".body").read_bytes()
        out.append(meta)
    return out


def _write_port(path: str, port: int) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(str(port))
    tmp.replace(path)


async def _serve(fake: FakeResponses, port: int, port_file: str | None) -> None:
    await fake.start(port)
    if port_file:
        _write_port(port_file, fake.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await fake.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file")
    parser.add_argument("--record-dir")
    parser.add_argument("--script", help="a JSON list of Answer objects")
    parser.add_argument("--no-websocket", action="store_true", help="answer upgrades 426")
    args = parser.parse_args(argv)
    script = [Answer.from_dict(d) for d in json.loads(Path(args.script).read_text())] if args.script else []
    fake = FakeResponses(script, websocket=not args.no_websocket,
                         record_dir=Path(args.record_dir) if args.record_dir else None)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(fake, args.port, args.port_file))


if __name__ == "__main__":
    main(sys.argv[1:])
