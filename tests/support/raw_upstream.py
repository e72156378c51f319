"""An upstream that answers with exactly the bytes a test scripts: for wire-level faults and framings
that a well-behaved server (the fake Anthropic) never produces."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from tests.support.loopback_server import LoopbackServer


@dataclass
class Answer:
    data: bytes = b""
    close: bool = False  # close the connection after writing (or, with no data, without answering)


Respond = Callable[[int, int, bytes, bytes], Answer]


class RawUpstream(LoopbackServer):
    """``respond(connection_no, request_no, head, body)`` decides each answer; both counters start at 0."""

    def __init__(self, respond: Respond) -> None:
        super().__init__()
        self.respond = respond
        self.connections = 0
        self.heads: list[bytes] = []

    async def __aenter__(self) -> RawUpstream:
        await super().__aenter__()
        return self

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn_no, self.connections = self.connections, self.connections + 1
        for req_no in range(1000):
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length)
            answer = self.respond(conn_no, req_no, head, body)
            writer.write(answer.data)
            await writer.drain()
            if answer.close:
                return
