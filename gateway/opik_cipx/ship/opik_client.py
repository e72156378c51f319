"""Opik REST batches over aiohttp, and what each answer means for the outbox.

The request bodies are assembled from the stored JSON payloads without parsing
them again. Every answer is classified once, here, so the shipper's loop only
decides what to do with a :class:`Verdict`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import aiohttp

from .privacy import mask_key as mask_key  # it lived here before; ship.stage imports it from privacy

BATCH_PATHS = {"trace": "/v1/private/traces/batch", "span": "/v1/private/spans/batch"}
BATCH_KEYS = {"trace": b"traces", "span": b"spans"}


class Verdict(StrEnum):
    OK = "ok"  # 2xx: acknowledged
    RETRY = "retry"  # connection error, timeout, 408, 429, 5xx: try again later
    REJECT = "reject"  # 400/409/413/422: something in the batch is refused for good
    BLOCKED = "blocked"  # 401/402/403/404: the destination refuses us; nothing to split


@dataclass(slots=True)
class SendResult:
    verdict: Verdict
    status: int | None
    message: str
    retry_after: float | None = None  # seconds, from RateLimit-Reset / Retry-After


def classify(status: int) -> Verdict:
    if 200 <= status < 300:
        return Verdict.OK
    if status in (408, 425, 429) or status >= 500:
        return Verdict.RETRY
    if status in (401, 402, 403, 404, 405):
        return Verdict.BLOCKED
    return Verdict.REJECT


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``RateLimit-Reset`` (seconds, or an epoch time) or ``Retry-After``.

    ``headers``: a response's (case-insensitive) headers, or a plain dict in tests.
    """
    for name in ("RateLimit-Reset", "X-RateLimit-Reset", "Retry-After"):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(str(raw).strip())
        except ValueError:
            continue
        if value > 1e9:  # an epoch timestamp, not a delay
            value -= now if now is not None else time.time()
        return max(0.0, value)
    return None


class OpikClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        api_key: str | None = None,
        workspace: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._session = session
        self.base_url = base_url.rstrip("/")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = api_key  # Opik wants the bare key, no "Bearer"
        if workspace:
            self._headers["Comet-Workspace"] = workspace
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 10.0))

    @staticmethod
    def body(kind: str, payloads: list[bytes]) -> bytes:
        return b'{"' + BATCH_KEYS[kind] + b'":[' + b",".join(payloads) + b"]}"

    async def send_batch(self, kind: str, payloads: list[bytes]) -> SendResult:
        url = self.base_url + BATCH_PATHS[kind]
        try:
            async with self._session.post(
                url, data=self.body(kind, payloads), headers=self._headers, timeout=self._timeout
            ) as resp:
                text = (await resp.read())[:2000].decode("utf-8", "replace")
                verdict = classify(resp.status)
                wait = retry_after(resp.headers) if verdict is Verdict.RETRY else None
                return SendResult(verdict, resp.status, text or resp.reason or "", wait)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return SendResult(Verdict.RETRY, None, f"{type(exc).__name__}: {exc}")

    async def ping(self) -> bool:
        try:
            async with self._session.get(
                self.base_url + "/is-alive/ping", headers=self._headers, timeout=self._timeout
            ) as resp:
                return resp.status == 200
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False
