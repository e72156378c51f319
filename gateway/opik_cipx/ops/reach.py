"""Can this machine reach the upstream? Resolve, connect, tunnel and shake hands, step by step.

``doctor`` runs this so an unreachable upstream is named with the step that failed (DNS,
TCP, the proxy's CONNECT, TLS) rather than discovered by Claude Code retrying for minutes.
The connection is opened with the relay's own pool, so it takes exactly the path (proxy,
tunnel, certificate checks) that real calls take; nothing is sent beyond the handshake.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from dataclasses import dataclass

from ..proxy.upstream import Pool, Target, UpstreamError

TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Reach:
    ok: bool
    detail: str
    fix: str | None = None


def reach_upstream(url: str, proxy: str | None, timeout: float = TIMEOUT_SECONDS) -> Reach:
    try:
        target = Target.parse(url, proxy)
    except ValueError as exc:
        return Reach(False, f"{url}: {exc}", "correct CIPX_UPSTREAM_URL / CIPX_UPSTREAM_PROXY")
    via = f" via proxy {target.proxy_host}:{target.proxy_port}" if target.proxy_host else ""
    first_host = target.proxy_host or target.host
    first_port = target.proxy_port or target.port
    fix_host = "CIPX_UPSTREAM_PROXY" if target.proxy_host else "CIPX_UPSTREAM_URL"
    try:
        socket.getaddrinfo(first_host, first_port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return Reach(False, f"cannot resolve {first_host}{via and ' (the proxy)'}: {exc.strerror or exc}",
                     f"check the host name in {fix_host} and this machine's DNS")
    started = time.perf_counter()
    try:
        asyncio.run(_open(target, timeout))
    except TimeoutError:
        return Reach(False, f"{url}{via}: no connection within {timeout:g}s",
                     f"check {fix_host}, firewalls, and that the host answers on port {first_port}")
    except ssl.SSLCertVerificationError as exc:
        return Reach(False, f"{url}{via}: TLS certificate not trusted: {exc.verify_message or exc}",
                     "install your proxy's CA certificate in the system trust store (or SSL_CERT_FILE)")
    except ssl.SSLError as exc:
        return Reach(False, f"{url}{via}: TLS handshake failed: {exc.reason or exc}",
                     "check that the upstream speaks HTTPS on that port")
    except UpstreamError as exc:
        return Reach(False, f"{url}: {exc}", "check CIPX_UPSTREAM_PROXY and the proxy's allow list")
    except OSError as exc:
        return Reach(False, f"{url}{via}: cannot connect to {first_host}:{first_port}: {exc.strerror or exc}",
                     f"check {fix_host} and that something listens there")
    ms = (time.perf_counter() - started) * 1000
    steps = "resolved, connected" + (", TLS verified" if target.tls else "")
    return Reach(True, f"{url}{via}: {steps} in {ms:.0f} ms")


async def _open(target: Target, timeout: float) -> None:
    pool = Pool(target)
    async with asyncio.timeout(timeout):
        conn = await pool.open()
    conn.abort()
