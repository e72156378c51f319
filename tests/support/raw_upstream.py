"""An upstream that answers with exactly the bytes a test scripts: for wire-level faults and framings
that a well-behaved server (the fake Anthropic) never produces."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Answer:
    data: bytes = b""
    close: bool = False  # close the connection after writing (or, with no data, without answering)


Respond = Callable[[int, int, bytes, bytes], Answer]


class RawUpstream:
    """``respond(connection_no, request_no, head, body)`` decides each answer; both counters start at 0."""

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.connections = 0
        self.heads: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn_no, self.connections = self.connections, self.connections + 1
        try:
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
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)
