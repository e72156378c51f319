"""Whatever bytes a client posts are forwarded byte-identical and stored byte-identical.

Property-based: hypothesis draws request bodies that are not what the API expects (binary,
truncated or nested JSON, invalid UTF-8, lone surrogates escaped, huge numbers, NULs), and
every one must reach the upstream unchanged and land in the spool unchanged, with the
capture stage never failing on it.
"""

from __future__ import annotations

import json

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opik_cipx.server import Gateway
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.gateway import API_KEY, captured

pytestmark = pytest.mark.slow

CASES = 150

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def _messages_like(value: object) -> bytes:
    return json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": value}).encode()


BODIES = st.one_of(
    st.binary(max_size=4096),  # anything at all
    _json_values.map(lambda v: json.dumps(v).encode()),  # JSON, but not a request
    _json_values.map(_messages_like),  # a request whose messages are nonsense
    st.builds(lambda v, cut: _messages_like(v)[:cut], _json_values, st.integers(0, 200)),  # truncated
    st.text().map(lambda t: t.encode("utf-8", "surrogatepass")),  # lone surrogates as raw bytes
)


@settings(max_examples=CASES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=BODIES)
async def test_bad_request_bodies_are_forwarded_and_stored_byte_identical(
    gateway: Gateway, upstream: FakeAnthropic, body: bytes
) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(gateway.url + "/v1/messages", data=body,
                          headers={"x-api-key": API_KEY, "content-type": "application/json"}) as r:
            await r.read()
    assert upstream.requests[-1].body == body
    (ex,) = await captured(gateway)
    assert ex.request_body == body and ex.request_bytes == len(body)
    assert gateway.capture is not None and gateway.capture.stats.errors == 0, gateway.capture.stats.last_error
