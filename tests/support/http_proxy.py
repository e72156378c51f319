"""A small forward HTTP proxy on 127.0.0.1 for tests of CIPX_UPSTREAM_PROXY.

``CONNECT host:port`` opens a tunnel (what the gateway does for an https
upstream); an absolute-form request (``POST http://host/path``) is passed on
in origin form, one request per connection. It records what it was asked, so a
test can check that the gateway really went through it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tests.support.loopback_server import LoopbackServer


@dataclass
class Seen:
    request_line: str
    headers: dict[str, str] = field(default_factory=dict)


class HttpProxy(LoopbackServer):
    def __init__(self, *, require_auth: str | None = None) -> None:
        super().__init__()
        self.require_auth = require_auth  # an exact Proxy-Authorization value, or None
        self.seen: list[Seen] = []

    async def __aenter__(self) -> HttpProxy:
        await super().__aenter__()
        return self

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        line, *rest = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in rest if h)}
        self.seen.append(Seen(line, headers))
        if self.require_auth is not None and headers.get("proxy-authorization") != self.require_auth:
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return
        method, target, _ = line.split(" ", 2)
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
        else:
            url = urlsplit(target)
            up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port or 80)
            origin = (url.path or "/") + (f"?{url.query}" if url.query else "")
            kept = [h for h in rest if h and not h.lower().startswith("proxy-authorization")]
            up_writer.write(f"{method} {origin} HTTP/1.1\r\n".encode() + "\r\n".join(kept).encode()
                            + b"\r\nConnection: close\r\n\r\n")
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
