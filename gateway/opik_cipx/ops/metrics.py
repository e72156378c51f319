"""``/_cipx/metrics`` (Prometheus text format) and ``/_cipx/ready``.

Counters live in memory and are bumped by a capture stage, one Exchange at a
time, so a scrape costs a render of a few dozen lines, never a scan of the
spool. They start at zero with each gateway process, as Prometheus counters
do; the spool keeps the history (``opik-cipx stats``).
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from typing import Any

from aiohttp import web

from ..model import Exchange
from ..wire.ratelimit import plan_windows
from .state import GatewayState, state_of

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Upper bounds in seconds for the time to the upstream's first response byte: Anthropic's
# head arrives in well under a second when cached, several seconds on long prompts.
TTFB_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_TYPES = ("input", "cache_write", "cache_read", "output")
READY_TIMEOUT = 2.0


class Histogram:
    """A cumulative Prometheus histogram with fixed buckets."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)  # per bucket, not cumulative; summed when rendered
        self.over = 0  # above the last bound
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                return
        self.over += 1

    def cumulative(self) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip(self.bounds, self.counts):
            running += n
            out.append((_number(bound), running))
        out.append(("+Inf", running + self.over))
        return out


class Metrics:
    """In-memory counters fed by :meth:`observe`, a capture stage."""

    def __init__(self) -> None:
        self.requests: dict[str, int] = defaultdict(int)  # by call kind (messages/count_tokens/other)
        self.calls: dict[tuple[str, str], int] = defaultdict(int)  # (model, outcome)
        self.tokens: dict[tuple[str, str], int] = defaultdict(int)  # (model, token type)
        self.cost: dict[str, float] = defaultdict(float)  # model -> USD
        self.unknown_cost: dict[str, int] = defaultdict(int)  # model -> calls with no price
        self.ttfb = Histogram(TTFB_BUCKETS)
        # The plan windows (5h / 7d utilization) the newest answer announced; None with an API key.
        self.plan: dict[str, Any] | None = None
        self.plan_at: float | None = None

    async def observe(self, ex: Exchange) -> None:
        """Capture stage: count one finished exchange. O(1), no I/O."""
        self.requests[ex.kind.value] += 1
        windows = plan_windows(ex.response_headers)
        if windows is not None:
            self.plan, self.plan_at = windows, ex.started_at
        if ex.ttfb_ms is not None:
            self.ttfb.observe(ex.ttfb_ms / 1000.0)
        if not ex.is_llm_call:
            return
        model = ex.model or "unknown"
        self.calls[(model, ex.outcome.value)] += 1
        u = ex.usage
        if u is None:
            return
        for name, value in zip(TOKEN_TYPES, (u.input_tokens, u.cache_creation_input_tokens,
                                             u.cache_read_input_tokens, u.output_tokens)):
            self.tokens[(model, name)] += value
        if ex.cost is not None and ex.cost.total_usd is not None:
            self.cost[model] += ex.cost.total_usd
        else:
            self.unknown_cost[model] += 1

    def render(self, gauges: dict[str, tuple[str, str, float]] | None = None) -> str:
        """The exposition text. ``gauges``: name -> (type, help, value) read live at scrape time."""
        out: list[str] = []

        def family(name: str, kind: str, help_text: str, samples: list[tuple[str, dict[str, str], float]]) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            for suffix, labels, value in samples:
                out.append(f"{name}{suffix}{_labels(labels)} {_number(value)}")

        family("opik_cipx_requests_total", "counter", "Requests proxied and captured, by call kind.",
               [("", {"kind": k}, v) for k, v in sorted(self.requests.items())])
        family("opik_cipx_llm_calls_total", "counter", "LLM calls (POST /v1/messages) by model and outcome.",
               [("", {"model": m, "outcome": o}, v) for (m, o), v in sorted(self.calls.items())])
        family("opik_cipx_tokens_total", "counter", "Billed tokens by model and type.",
               [("", {"model": m, "type": t}, v) for (m, t), v in sorted(self.tokens.items())])
        family("opik_cipx_cost_usd_total", "counter", "Cost in US dollars of calls with a known price, by model.",
               [("", {"model": m}, v) for m, v in sorted(self.cost.items())])
        family("opik_cipx_unknown_cost_calls_total", "counter",
               "Calls with usage but no known price (not counted as $0), by model.",
               [("", {"model": m}, v) for m, v in sorted(self.unknown_cost.items())])
        ttfb = [("_bucket", {"le": le}, float(n)) for le, n in self.ttfb.cumulative()]
        ttfb += [("_sum", {}, self.ttfb.sum), ("_count", {}, float(self.ttfb.count))]
        family("opik_cipx_upstream_ttfb_seconds", "histogram",
               "Seconds from the request's arrival to the upstream's first response byte.", ttfb)
        plan = self.plan or {}
        utilization = [("", {"window": name}, w["utilization"]) for name in ("five_hour", "seven_day")
                       if isinstance(w := plan.get(name), dict) and isinstance(w.get("utilization"), float)]
        if utilization:
            family("opik_cipx_plan_utilization", "gauge",
                   "Share (0-1) of the Claude plan window used, as the newest answer announced.", utilization)
        for name, (kind, help_text, value) in sorted((gauges or {}).items()):
            family(name, kind, help_text, [("", {}, value)])
        return "\n".join(out) + "\n"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34)).replace(chr(10), chr(92) + "n")}"'
        for k, v in labels.items()
    )
    return "{" + inner + "}"


def ship_queue_depth(gateway: GatewayState) -> float | None:
    """The shipper's queue depth; None when no shipper runs."""
    status = gateway.shipper_status()
    depth = status.get("queue_depth") if status is not None else None
    return float(depth) if isinstance(depth, (int, float)) else None


def live_gauges(gateway: GatewayState) -> dict[str, tuple[str, str, float]]:
    gauges: dict[str, tuple[str, str, float]] = {}
    capture = gateway.capture_report()
    if capture is not None:
        stats = capture.stats
        gauges["opik_cipx_capture_dropped_total"] = (
            "counter", "Calls forwarded but not captured because the capture queue was full.", float(stats.dropped))
        gauges["opik_cipx_capture_errors_total"] = (
            "counter", "Capture stages that raised (the call itself was unaffected).", float(stats.errors))
        gauges["opik_cipx_capture_held"] = (
            "gauge", "Calls the store failed on, kept in the journal for a retry.", float(stats.held))
        gauges["opik_cipx_capture_quarantined_total"] = (
            "counter", "Calls stored raw as unparseable because capture died on them.", float(stats.quarantined))
        gauges["opik_cipx_capture_retried_total"] = (
            "counter", "Calls handed to the store again after a failed attempt.", float(stats.retried))
        gauges["opik_cipx_capture_pending"] = (
            "gauge", "Finished calls waiting to be stored.", float(capture.pending))
    upstream = gateway.upstream
    gauges["opik_cipx_upstream_failures_total"] = (
        "counter", "Calls the gateway answered itself (502/504) because the upstream did not.",
        float(upstream.failures_total))
    gauges["opik_cipx_upstream_consecutive_failures"] = (
        "gauge", "Calls in a row the upstream did not answer (0 while it is healthy).",
        float(upstream.consecutive_failures))
    depth = ship_queue_depth(gateway)
    if depth is not None:
        gauges["opik_cipx_ship_queue_depth"] = ("gauge", "Spans waiting to be shipped to Opik.", depth)
    return gauges


async def readiness(gateway: GatewayState) -> tuple[bool, dict[str, Any]]:
    """Ready = the spool answers a query and the capture task is running."""
    spool_ok = False
    if gateway.spool is not None:
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                spool_ok = await gateway.spool.run(lambda sp: sp.conn.execute("SELECT 1").fetchone()[0] == 1)
        except Exception:  # noqa: BLE001 - any failure means not ready; the reason is in the log
            spool_ok = False
    capture = gateway.capture_report()
    worker_ok = capture is not None and capture.running
    return spool_ok and worker_ok, {"spool": spool_ok, "capture_worker": worker_ok}


METRICS_KEY: web.AppKey[Metrics] = web.AppKey("metrics")


def setup_metrics(app: web.Application, metrics: Metrics) -> None:
    """Add ``/_cipx/metrics`` and ``/_cipx/ready``; call before any catch-all route.

    ``metrics`` is fed by the gateway as an after-commit capture stage. Neither route
    needs the viewer token (a Prometheus scraper cannot hold a per-start secret, and
    neither exposes prompt content); the gateway's guard has already checked ``Host``.
    """
    app[METRICS_KEY] = metrics

    async def render(request: web.Request) -> web.StreamResponse:
        text = request.app[METRICS_KEY].render(live_gauges(state_of(request)))
        return web.Response(body=text.encode("utf-8"), headers={"Content-Type": CONTENT_TYPE,
                                                                 "Cache-Control": "no-store"})

    async def ready(request: web.Request) -> web.StreamResponse:
        ok, parts = await readiness(state_of(request))
        return web.json_response({"ready": ok, **parts}, status=200 if ok else 503,
                                 headers={"Cache-Control": "no-store"})

    app.router.add_get("/_cipx/metrics", render, allow_head=False)
    app.router.add_get("/_cipx/ready", ready, allow_head=True)
