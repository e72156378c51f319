"""Anonymous error reports, only when ``CIPX_SENTRY_DSN`` is set and ``CIPX_SENTRY`` is not off.

A minimal Sentry ``store`` request over aiohttp instead of the sentry-sdk: the
SDK hooks logging, threads and the event loop globally, and we want exactly
one thing from it -- "this exception happened in this function" -- with no
request bodies, headers, keys, prompts or paths in it. Every report is
scrubbed (:func:`scrub`) and rate-limited per error site.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import traceback
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from .. import __version__

log = logging.getLogger(__name__)

_SECRETS = [
    re.compile(r"sk-ant-[A-Za-z0-9_\-]+"),
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]+"),
    re.compile(r"(?i)\b(api[_-]?key|authorization|x-api-key|token|password|secret)\b\s*[=:]\s*\S+"),
    re.compile(r"[A-Za-z0-9_\-]{32,}"),  # long opaque tokens: keys, hashes, ids
    re.compile(r"[\w.+\-]+@[\w\-]+\.[\w.\-]+"),  # emails
    re.compile(r"(?<=://)[^/\s:@]+(:[^/\s@]*)?@"),  # URL userinfo
    re.compile(r"(?<=[?&])[^=&\s]+=[^&\s]*"),  # query values
    re.compile(r"/(home|Users|root)/[^\s'\"]+"),  # paths in someone's home
]
MAX_MESSAGE = 300


def scrub(text: str) -> str:
    for pattern in _SECRETS:
        text = pattern.sub("[scrubbed]", text)
    return text[:MAX_MESSAGE]


@dataclass(frozen=True, slots=True)
class Dsn:
    store_url: str
    public_key: str

    @classmethod
    def parse(cls, dsn: str) -> Dsn:
        parts = urlsplit(dsn)
        if parts.scheme not in ("http", "https") or not parts.username or not parts.hostname:
            raise ValueError("CIPX_SENTRY_DSN must look like https://<key>@<host>/<project>")
        project = parts.path.strip("/").rsplit("/", 1)[-1]
        if not project:
            raise ValueError("CIPX_SENTRY_DSN has no project id")
        prefix = parts.path.strip("/").rsplit("/", 1)[0] if "/" in parts.path.strip("/") else ""
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        base = f"{parts.scheme}://{host}" + (f"/{prefix}" if prefix else "")
        return cls(f"{base}/api/{project}/store/", parts.username)


class Telemetry:
    """Fire-and-forget reports; never raises, never blocks the caller."""

    def __init__(self, dsn: str | None, mode: str = "on", *, min_interval: float = 60.0) -> None:
        self.dsn: Dsn | None = None
        self.error: str | None = None
        if dsn and mode != "off":
            try:
                self.dsn = Dsn.parse(dsn)
            except ValueError as exc:
                self.error = str(exc)
        self._min_interval = min_interval
        self._last: dict[str, float] = {}
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0

    @property
    def enabled(self) -> bool:
        return self.dsn is not None

    def event(self, exc: BaseException, where: str) -> dict[str, object]:
        frames = [
            {"module": f.filename.rsplit("/opik_cipx/", 1)[-1] if "/opik_cipx/" in f.filename else "(external)",
             "function": f.name, "lineno": f.lineno}
            for f in traceback.extract_tb(exc.__traceback__)
        ]
        return {
            "event_id": uuid.uuid4().hex,
            "timestamp": time.time(),
            "level": "error",
            "platform": "python",
            "logger": "opik_cipx",
            "release": f"opik-cipx@{__version__}",
            "tags": {"where": where},
            "exception": {
                "values": [
                    {"type": type(exc).__name__, "value": scrub(str(exc)), "stacktrace": {"frames": frames}}
                ]
            },
        }

    def report(self, exc: BaseException, where: str) -> bool:
        """Queue a report of ``exc``; False when off or rate-limited."""
        if self.dsn is None:
            return False
        key = f"{where}:{type(exc).__name__}"
        now = time.monotonic()
        if now - self._last.get(key, float("-inf")) < self._min_interval:
            return False
        self._last[key] = now
        try:
            task = asyncio.get_running_loop().create_task(self._send(self.event(exc, where)))
        except RuntimeError:  # no running loop: nothing to send with
            return False
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _send(self, event: dict[str, object]) -> None:
        assert self.dsn is not None
        if self._session is None:
            self._session = aiohttp.ClientSession(trust_env=False)
        auth = f"Sentry sentry_version=7, sentry_client=opik-cipx/{__version__}, sentry_key={self.dsn.public_key}"
        try:
            async with self._session.post(
                self.dsn.store_url, json=event, headers={"X-Sentry-Auth": auth},
                timeout=aiohttp.ClientTimeout(total=10),
            ) as resp:
                await resp.read()
                self.sent += resp.status < 300
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.debug("error report not sent: %s", exc)

    async def flush(self, timeout: float = 2.0) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def aclose(self) -> None:
        await self.flush()
        if self._session is not None:
            await self._session.close()
            self._session = None
