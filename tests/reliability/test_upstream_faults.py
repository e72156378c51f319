"""An upstream fault matrix: each misbehaviour reaches the client as the upstream sent it (or as
an honest gateway error), and is stored with the outcome it deserves."""

from __future__ import annotations

import gzip
import json

import aiohttp
import brotli
import pytest
import zstandard

from opik_cipx.model import Outcome
from opik_cipx.server import Gateway
from tests.support.gateway import captured, post_raw, request_body
from tests.support.raw_upstream import Answer, RawUpstream

pytestmark = pytest.mark.slow

_MSG = json.dumps({"type": "message", "model": "claude-sonnet-4-5", "content": [],
                   "usage": {"input_tokens": 3, "output_tokens": 1}}).encode()
_ERR = json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}).encode()
_GZ = gzip.compress(_MSG)
_BR = brotli.compress(_MSG)
_ZSTD = zstandard.ZstdCompressor().compress(_MSG)
_BAD_SSE = b"event: what\ndata: {not json\n\nevent: message_start\ndata: [1,\n\n"


def _http(status: str, headers: bytes, body: bytes) -> bytes:
    return b"HTTP/1.1 %s\r\n%sContent-Length: %d\r\n\r\n%s" % (status.encode(), headers, len(body), body)


# name -> (what the upstream writes, whether it then closes, expected client status or None for a
# broken response, the body the client must get or None, the stored outcome)
CASES: dict[str, tuple[bytes, bool, int | None, bytes | None, Outcome]] = {
    "500 with a body": (_http("500 Internal Server Error", b"Content-Type: application/json\r\n", _ERR),
                        False, 500, _ERR, Outcome.HTTP_ERROR),
    "429 with retry-after": (_http("429 Too Many Requests", b"Retry-After: 7\r\nContent-Type: application/json\r\n",
                                   _ERR), False, 429, _ERR, Outcome.HTTP_ERROR),
    "529 overloaded": (_http("529 Overloaded", b"Content-Type: application/json\r\n", _ERR),
                       False, 529, _ERR, Outcome.HTTP_ERROR),
    "closed before any answer": (b"", True, 502, None, Outcome.UNREACHABLE),
    "garbage status line": (b"NOT HTTP AT ALL\r\n\r\n", True, 502, None, Outcome.UNREACHABLE),
    "truncated chunked body": (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                               b"100\r\n{\"type\":\"mess", True, None, None, Outcome.TRUNCATED),
    "reset mid content-length": (b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"type\"", True, None, None,
                                 Outcome.TRUNCATED),
    "gzip body": (_http("200 OK", b"Content-Type: application/json\r\nContent-Encoding: gzip\r\n", _GZ),
                  False, 200, _GZ, Outcome.COMPLETE),
    "br body": (_http("200 OK", b"Content-Type: application/json\r\nContent-Encoding: br\r\n", _BR),
                False, 200, _BR, Outcome.COMPLETE),
    "zstd body": (_http("200 OK", b"Content-Type: application/json\r\nContent-Encoding: zstd\r\n", _ZSTD),
                  False, 200, _ZSTD, Outcome.COMPLETE),
    "malformed SSE": (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"%x\r\n%s\r\n0\r\n\r\n" % (len(_BAD_SSE), _BAD_SSE), False, 200, _BAD_SSE, Outcome.TRUNCATED),
    "large response header (~8 KB)": (_http("200 OK", b"Content-Type: application/json\r\nX-Pad: " + b"p" * 7_900 + b"\r\n",
                                   _MSG), False, 200, _MSG, Outcome.COMPLETE),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_upstream_fault(case: str, make_settings: object) -> None:
    data, close, status, body, outcome = CASES[case]
    async with RawUpstream(lambda *_: Answer(data, close=close)) as up, \
            Gateway(make_settings(upstream_url=up.url)) as gw:  # type: ignore[operator]
        if status is None:
            with pytest.raises(aiohttp.ClientPayloadError):
                await post_raw(gw.url, request_body(stream=False))
        else:
            got_status, _, got = await post_raw(gw.url, request_body(stream=False))
            assert got_status == status
            if body is not None:
                assert got == body  # byte-identical, still encoded
        (ex,) = await captured(gw)
    assert ex.outcome is outcome, (case, ex.outcome, ex.error)
    if outcome is Outcome.COMPLETE:  # an encoded body is decoded for capture: its usage was read
        assert ex.usage is not None and ex.usage.input_tokens == 3, (case, ex.usage)
