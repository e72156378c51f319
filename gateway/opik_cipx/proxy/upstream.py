"""Connections to the upstream API: opened (TLS, a CONNECT tunnel when a proxy is set), pooled, reused.

The proxy's hot path writes requests straight onto these transports and feeds
what they read to the call that owns them, so a reused connection costs no
task, no stream object and no copy. Only opening a connection is a coroutine.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote, urlsplit

# Anthropic closes idle keep-alive connections itself; dropping ours first avoids
# most of the races where a request is written onto a connection being closed.
IDLE_SECONDS = 30.0
MAX_IDLE = 32
CONNECT_SECONDS = 30.0


class UpstreamError(Exception):
    """Opening a connection failed in a way the socket layer does not describe (e.g. the proxy said no)."""


class Owner(Protocol):
    """The call currently reading from a connection."""

    def upstream_data(self, data: bytes) -> None: ...
    def upstream_lost(self, exc: Exception | None) -> None: ...
    def upstream_paused(self, paused: bool) -> None: ...


@dataclass(frozen=True)
class Target:
    """Where requests go: the upstream origin, an optional base path, and an optional HTTP proxy."""

    url: str
    host: str
    port: int
    tls: bool
    base_path: bytes
    host_header: bytes
    proxy_host: str | None = None
    proxy_port: int | None = None
    proxy_auth: bytes | None = None  # the Proxy-Authorization value, from the proxy URL's userinfo

    @classmethod
    def parse(cls, url: str, proxy: str | None = None) -> Target:
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if tls else 80)
        default = port == (443 if tls else 80)
        host_header = (f"[{host}]" if ":" in host else host) + ("" if default else f":{port}")
        target = cls(url=url.rstrip("/"), host=host, port=port, tls=tls,
                     base_path=parts.path.rstrip("/").encode(), host_header=host_header.encode("idna"))
        if not proxy:
            return target
        p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if p.scheme != "http":
            raise ValueError(f"CIPX_UPSTREAM_PROXY must be an http:// proxy URL, got {proxy!r}")
        auth = None
        if p.username is not None:
            cred = f"{unquote(p.username)}:{unquote(p.password or '')}".encode()
            auth = b"Basic " + base64.b64encode(cred)
        return cls(url=target.url, host=host, port=port, tls=tls, base_path=target.base_path,
                   host_header=target.host_header, proxy_host=p.hostname, proxy_port=p.port or 80,
                   proxy_auth=auth)

    def request_target(self, path: bytes) -> bytes:
        """The request line's target: origin-form, or absolute-form to a plain-HTTP proxy."""
        if self.proxy_host is not None and not self.tls:
            return b"http://" + self.host_header + self.base_path + path
        return self.base_path + path

    @property
    def proxy_headers(self) -> bytes:
        """Extra header lines a plain-HTTP proxy needs on each request."""
        if self.proxy_host is not None and not self.tls and self.proxy_auth:
            return b"Proxy-Authorization: " + self.proxy_auth + b"\r\n"
        return b""


class Connection(asyncio.Protocol):
    """One upstream connection; hands everything it reads to its current owner."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.owner: Owner | None = None
        self.closed = False
        self.reused = False  # served a call before: may have been closed by the upstream meanwhile
        self.idle_timer: asyncio.TimerHandle | None = None
        # Set while a CONNECT tunnel is being set up: the proxy's answer goes here.
        self._tunnel: asyncio.Future[bytes] | None = None
        self._tunnel_buf = b""

    # asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio.Protocol's signature says BaseTransport; a stream connection always gets a Transport.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner is not None:
            owner.upstream_data(data)
        elif self._tunnel is not None:
            self._tunnel_data(data)
        elif self.transport is not None:
            # Bytes nobody asked for on an idle connection: it cannot be trusted for the next call.
            self.transport.abort()

    def eof_received(self) -> bool | None:
        return None  # close; connection_lost reports it to the owner

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self._tunnel is not None and not self._tunnel.done():
            self._tunnel.set_exception(exc or UpstreamError("the proxy closed the connection during CONNECT"))
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.upstream_lost(exc)

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner.upstream_paused(True)

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner.upstream_paused(False)

    # use ---------------------------------------------------------------------------
    def abort(self) -> None:
        self.owner = None
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _tunnel_data(self, data: bytes) -> None:
        assert self._tunnel is not None
        self._tunnel_buf += data
        end = self._tunnel_buf.find(b"\r\n\r\n")
        if end >= 0 and not self._tunnel.done():
            self._tunnel.set_result(self._tunnel_buf[:end])
        elif len(self._tunnel_buf) > 64 * 1024 and not self._tunnel.done():
            self._tunnel.set_exception(UpstreamError("the proxy's answer to CONNECT has no end"))

    async def open_tunnel(self, target: Target) -> None:
        """Ask the proxy for a tunnel to the upstream; raises UpstreamError unless it answers 2xx."""
        assert self.transport is not None
        self._tunnel = asyncio.get_running_loop().create_future()
        host = f"[{target.host}]" if ":" in target.host else target.host
        authority = f"{host}:{target.port}"
        head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n".encode()
        if target.proxy_auth:
            head += b"Proxy-Authorization: " + target.proxy_auth + b"\r\n"
        self.transport.write(head + b"\r\n")
        answer = await self._tunnel
        self._tunnel = None
        status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
        fields = status_line.split(" ", 2)
        if len(fields) < 2 or not fields[1].startswith("2"):
            raise UpstreamError(f"proxy {target.proxy_host}:{target.proxy_port} refused CONNECT: {status_line!r}")


class Pool:
    """Idle upstream connections, most recently used first."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._idle: list[Connection] = []
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if target.tls else None
        self.opened = 0  # connections opened since start: how often the pool missed

    def take(self) -> Connection | None:
        """An idle connection, or None when a new one must be opened."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.idle_timer is not None:
                conn.idle_timer.cancel()
                conn.idle_timer = None
            if not conn.closed:
                conn.reused = True
                return conn
        return None

    async def open(self) -> Connection:
        """A new connection, through the proxy's tunnel and TLS as configured."""
        loop = asyncio.get_running_loop()
        t = self.target
        self.opened += 1
        async with asyncio.timeout(CONNECT_SECONDS):
            if t.proxy_host is None or t.proxy_port is None:  # direct (parse() gives a proxy a port)
                _, conn = await loop.create_connection(
                    lambda: Connection(self), t.host, t.port, ssl=self._ssl,
                    server_hostname=t.host if self._ssl else None)
                return conn
            transport, conn = await loop.create_connection(lambda: Connection(self), t.proxy_host, t.proxy_port)
            try:
                if t.tls:
                    await conn.open_tunnel(t)
                    assert self._ssl is not None
                    tls = await loop.start_tls(transport, conn, self._ssl, server_hostname=t.host)
                    if tls is None:
                        raise UpstreamError("TLS through the proxy's tunnel could not start")
                    conn.transport = tls
            except BaseException:
                transport.abort()
                raise
            return conn

    def give_back(self, conn: Connection) -> None:
        if conn.closed or conn.transport is None or len(self._idle) >= MAX_IDLE:
            conn.abort()
            return
        conn.owner = None
        if not conn.transport.is_reading():
            conn.transport.resume_reading()  # paused for a slow client; the next call reads again
        conn.idle_timer = asyncio.get_running_loop().call_later(IDLE_SECONDS, conn.abort)
        self._idle.append(conn)

    def forget(self, conn: Connection) -> None:
        if conn.idle_timer is not None:
            conn.idle_timer.cancel()
            conn.idle_timer = None
        try:
            self._idle.remove(conn)
        except ValueError:
            pass

    def close(self) -> None:
        for conn in list(self._idle):
            conn.abort()
        self._idle.clear()
