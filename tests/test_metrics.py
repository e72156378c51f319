"""``/_cipx/metrics`` and ``/_cipx/ready`` on the gateway's loopback listener."""

from __future__ import annotations

import re
from collections import defaultdict

import aiohttp
import pytest

from opik_cipx.model import CallKind, Cost, Exchange, Outcome, Usage
from opik_cipx.ops.metrics import Histogram, Metrics, _labels
from opik_cipx.server import Gateway
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.replay import replay

SAMPLE = re.compile(r'^([a-z_]+)(?:\{(.*)\})? (\S+)$')


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not exposition format: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


async def scrape(gw: Gateway, path: str = "/_cipx/metrics", host: str | None = None) -> aiohttp.ClientResponse:
    headers = {"Host": host} if host else {}
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + path, headers=headers) as r:
            await r.read()
            return r


async def test_metrics_count_calls_tokens_and_cost_by_model(gateway: Gateway, upstream: FakeAnthropic) -> None:
    await replay(gateway, "haiku")
    assert gateway.spool is not None
    rows = await gateway.spool.run(lambda sp: sp.calls(limit=1000))
    async with aiohttp.ClientSession() as s:
        async with s.get(gateway.url + "/_cipx/metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            samples = parse(await r.text())
    model = rows[0].model
    assert model and all(r.model == model for r in rows)
    m = frozenset({("model", model)})
    assert samples[("opik_cipx_llm_calls_total", m | {("outcome", "complete")})] == len(rows) == 10
    for kind, column in (("input", "input_tokens"), ("cache_read", "cache_read_input_tokens"),
                         ("cache_write", "cache_creation_input_tokens"), ("output", "output_tokens")):
        assert samples[("opik_cipx_tokens_total", m | {("type", kind)})] == sum(getattr(r, column) for r in rows)
    assert samples[("opik_cipx_cost_usd_total", m)] == pytest.approx(sum(r.cost_usd or 0 for r in rows))
    assert samples[("opik_cipx_requests_total", frozenset({("kind", "messages")}))] == 10
    buckets = sorted(((float(dict(k[1])["le"]), v) for k, v in samples.items()
                      if k[0] == "opik_cipx_upstream_ttfb_seconds_bucket"))
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and counts[-1] == 10
    assert samples[("opik_cipx_upstream_ttfb_seconds_count", frozenset())] == 10
    ttfb_sum = sum((r.ttfb_ms or 0) / 1000 for r in rows)
    assert samples[("opik_cipx_upstream_ttfb_seconds_sum", frozenset())] == pytest.approx(ttfb_sum, rel=1e-6)
    assert samples[("opik_cipx_capture_dropped_total", frozenset())] == 0
    if getattr(gateway, "shipper", None) is not None:
        assert ("opik_cipx_ship_queue_depth", frozenset()) in samples


async def test_metrics_and_ready_refuse_a_foreign_host(gateway: Gateway) -> None:
    assert (await scrape(gateway, host="attacker.example")).status == 403
    assert (await scrape(gateway, host=f"attacker.example:{gateway.port}")).status == 403
    assert (await scrape(gateway, "/_cipx/ready", host="rebind.attacker.example")).status == 403
    assert (await scrape(gateway, host=f"localhost:{gateway.port}")).status == 200


async def test_ready_is_503_once_the_spool_is_closed_while_metrics_still_answer(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(gateway.url + "/_cipx/ready") as r:
            assert r.status == 200 and (await r.json()) == {"ready": True, "spool": True, "capture_worker": True}
        assert gateway.spool is not None
        await gateway.spool.close()
        async with s.get(gateway.url + "/_cipx/ready") as r:
            assert r.status == 503 and (await r.json())["spool"] is False
        # Counters live in memory, so a scrape never touches the spool: it still works now.
        async with s.get(gateway.url + "/_cipx/metrics") as r:
            assert r.status == 200 and "opik_cipx_requests_total" in await r.text()


def test_unpriced_calls_are_counted_apart_and_never_as_zero_cost() -> None:
    import asyncio

    metrics = Metrics()
    ex = Exchange(id="a", started_at=0.0, method="POST", path="/v1/messages", kind=CallKind.MESSAGES,
                  model='odd"model', usage=Usage(input_tokens=5, output_tokens=2), cost=Cost(total_usd=None),
                  outcome=Outcome.COMPLETE, ttfb_ms=300.0)
    other = Exchange(id="b", started_at=0.0, method="GET", path="/v1/models", kind=CallKind.OTHER, ttfb_ms=70_000.0)
    asyncio.run(metrics.observe(ex))
    asyncio.run(metrics.observe(other))
    samples = parse(metrics.render())
    m = frozenset({("model", 'odd\\"model')})
    assert samples[("opik_cipx_unknown_cost_calls_total", m)] == 1
    assert ("opik_cipx_cost_usd_total", m) not in samples
    assert samples[("opik_cipx_tokens_total", m | {("type", "input")})] == 5
    by_le = {dict(k[1])["le"]: v for k, v in samples.items() if k[0] == "opik_cipx_upstream_ttfb_seconds_bucket"}
    assert by_le["0.25"] == 0 and by_le["0.5"] == 1 and by_le["60"] == 1 and by_le["120"] == 2 and by_le["+Inf"] == 2


def test_histogram_overflow_lands_only_in_inf() -> None:
    h = Histogram((1.0, 2.0))
    for v in (0.5, 1.0, 1.5, 3.0, 9.0):
        h.observe(v)
    assert h.cumulative() == [("1", 2), ("2", 3), ("+Inf", 5)]
    assert h.sum == pytest.approx(15.0) and h.count == 5


def test_label_values_are_escaped() -> None:
    assert _labels({"model": 'a\\b"c\nd'}) == '{model="a\\\\b\\"c\\nd"}'


def test_counts_by_outcome_are_kept_apart() -> None:
    import asyncio

    metrics = Metrics()
    outcomes = [Outcome.COMPLETE, Outcome.COMPLETE, Outcome.HTTP_ERROR]
    for i, outcome in enumerate(outcomes):
        asyncio.run(metrics.observe(Exchange(id=str(i), started_at=0.0, method="POST", path="/v1/messages",
                                             kind=CallKind.MESSAGES, model="m", outcome=outcome)))
    samples = parse(metrics.render())
    got: dict[str, float] = defaultdict(float)
    for (name, labels), v in samples.items():
        if name == "opik_cipx_llm_calls_total":
            got[dict(labels)["outcome"]] += v
    assert dict(got) == {"complete": 2, "http_error": 1}
