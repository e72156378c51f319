"""Talking to an in-process gateway (the ``gateway`` fixture in tests/conftest.py, or a
``Gateway`` a test starts in its temp home): request bodies, raw HTTP, and the stored calls."""

from __future__ import annotations

import asyncio
import io
import json
import socket
from typing import Any

import aiohttp
from multidict import CIMultiDict

from opik_cipx.model import Exchange
from opik_cipx.server import Gateway

API_KEY = "sk-ant-test-SECRET-4b1d"
SESSION = "6f1c2a8e-3f0e-4d7a-9a51-0c2f7d1e9b42"
# aiohttp warns (ResourceWarning) when more than 1 MiB is posted as raw bytes, which it writes
# in one go on the event loop; a BytesIO is streamed instead, with the same Content-Length.
_RAW_BYTES_LIMIT = 2**20


def body_payload(body: bytes) -> bytes | io.BytesIO:
    """``body`` as aiohttp should be handed it: the bytes, or a BytesIO when they are large."""
    return io.BytesIO(body) if len(body) > _RAW_BYTES_LIMIT else body


def request_body(**extra: Any) -> bytes:
    """A small streamed ``/v1/messages`` request carrying SESSION in its metadata; ``extra`` overrides keys."""
    body = {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "hello"}],
        "metadata": {"user_id": json.dumps({"device_id": "d" * 64, "account_uuid": "", "session_id": SESSION})},
    }
    body.update(extra)
    return json.dumps(body).encode()


async def captured(gw: Gateway, n: int = 1, timeout: float = 10.0) -> list[Exchange]:
    """The newest ``n`` stored exchanges, waiting for calls still finishing (e.g. a cancelled handler)."""
    assert gw.capture is not None and gw.spool is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        assert await gw.capture.drain(timeout)
        rows = await gw.spool.run(lambda s: s.last(n, llm_only=False))
        if len(rows) >= n or loop.time() > deadline:
            return rows
        await asyncio.sleep(0.02)


async def post_raw(
    url: str, body: bytes, headers: dict[str, str] | None = None, path: str = "/v1/messages?beta=true"
) -> tuple[int, CIMultiDict[str], bytes]:
    """POST ``body`` with API_KEY; status, headers and the body as sent (no decompression)."""
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        async with s.post(url + path, data=body_payload(body), headers={"x-api-key": API_KEY, "content-type": "application/json", **(headers or {})}) as r:
            return r.status, r.headers.copy(), await r.read()


async def raw_exchange(port: int, data: bytes, *, until_close: bool = True, timeout: float = 10.0) -> bytes:
    """Send raw bytes to the gateway and return everything it answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        async with asyncio.timeout(timeout):
            return await reader.read(-1) if until_close else await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()


def post_bytes(body: bytes, *, close: bool = False, path: bytes = b"/v1/messages") -> bytes:
    """A raw HTTP/1.1 POST of ``body`` with a Content-Length (and ``Connection: close`` if asked)."""
    extra = b"Connection: close\r\n" if close else b""
    return (b"POST %s HTTP/1.1\r\nHost: x\r\nx-api-key: k\r\nContent-Length: %d\r\n%s\r\n"
            % (path, len(body), extra)) + body


def free_port() -> int:
    """A loopback port nothing listens on (free when asked; a test binds it soon after, or never)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
