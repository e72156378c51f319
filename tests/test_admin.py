"""The gateway's /_cipx/ routes and the status document `opik-cipx status` renders."""

from __future__ import annotations

import os
import time
from typing import Any

import aiohttp
import pytest

from opik_cipx.ops import admin
from opik_cipx.ops.status import STATUS_DEGRADED, STATUS_DOWN, STATUS_OK, render_status

JSON = {"Content-Type": "application/json"}


async def call(gw: Any, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as client:
        async with client.request(method, f"{gw.url}{path}", **kw) as resp:
            data = await resp.json(content_type=None)
            return resp.status, data


async def llm_call(gw: Any) -> None:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 8, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as client:
        async with client.post(f"{gw.url}/v1/messages", json=body, headers={"x-api-key": "k"}) as resp:
            await resp.read()
    assert gw.capture is not None and await gw.capture.drain(5)


async def test_health_names_the_process_and_port(gateway: Any, upstream: Any) -> None:
    status, data = await call(gateway, "GET", "/_cipx/health")
    assert status == 200 and data["pid"] == os.getpid() and data["port"] == gateway.port
    assert not upstream.requests, "admin routes are answered by the gateway, never forwarded"


async def test_unknown_admin_paths_are_404_and_never_reach_the_upstream(gateway: Any, upstream: Any) -> None:
    for method, path in (("GET", "/_cipx/nope"), ("POST", "/_cipx/status"), ("DELETE", "/_cipx/sessions")):
        status, _ = await call(gateway, method, path)
        assert status in (404, 405), (method, path)
    assert not upstream.requests


async def test_status_counts_captures_and_reads_the_spool(gateway: Any) -> None:
    await llm_call(gateway)
    status, doc = await call(gateway, "GET", "/_cipx/status")
    assert status == 200
    assert doc["pid"] == os.getpid() and doc["port"] == gateway.port and doc["uptime_s"] >= 0
    assert doc["capture"]["captured"] == 1 and doc["capture"]["dropped"] == 0
    assert doc["spool"]["calls"] == 1 and doc["spool"]["llm_calls"] == 1 and doc["spool"]["bytes"] > 0
    [row] = await gateway.spool.calls()
    assert doc["spool"]["oldest_body_at"] == row.started_at and doc["spool"]["pruned_calls"] == 0
    assert doc["problems"] == []


async def test_spool_figures_are_cached_for_a_few_seconds(gateway: Any) -> None:
    figures = admin.SpoolFigures(ttl=60)
    before = await figures.get(gateway)
    await llm_call(gateway)
    assert (await figures.get(gateway))["calls"] == before["calls"]  # type: ignore[index]
    figures.ttl = 0
    assert (await figures.get(gateway))["calls"] == before["calls"] + 1  # type: ignore[index]


class FakeShipper:
    def __init__(self, **over: Any) -> None:
        self.doc = {
            "destination": {"base_url": "http://127.0.0.1:1/opik", "workspace": "team", "project": "cc", "api_key_masked": "ab…yz"},
            "enabled_default": True, "queue_depth": 3, "outbox_bytes": 2048, "shipped": 7, "rejected": 1, "dropped": 2,
            "last_shipped": {"at": time.time() - 5, "span_id": "span-123"}, "last_error": None,
            "telemetry": False, "capture_content": True, "sample_rate": 1.0,
        }
        self.doc.update(over)

    def status(self) -> dict[str, Any]:
        return self.doc


async def test_shipper_status_is_included_and_a_recent_opik_error_is_a_problem(gateway: Any) -> None:
    real = gateway.shipper
    try:
        gateway.shipper = FakeShipper()
        _, doc = await call(gateway, "GET", "/_cipx/status")
        assert doc["shipper"]["shipped"] == 7 and doc["problems"] == []
        gateway.shipper = FakeShipper(last_error={"at": time.time(), "message": "401 unauthorized"})
        _, doc = await call(gateway, "GET", "/_cipx/status")
        assert doc["problems"] == ["Opik is failing, spans wait in the local outbox: 401 unauthorized"]
    finally:
        gateway.shipper = real  # the gateway's shutdown stops its own shipper


async def test_an_opik_error_before_anything_shipped_is_a_problem_not_a_500(gateway: Any) -> None:
    """The state of a first setup with a wrong Opik URL: an ISO-stamped error, nothing shipped."""
    from opik_cipx.ship.privacy import iso_now

    real = gateway.shipper
    try:
        gateway.shipper = FakeShipper(last_shipped=None, last_error={"at": iso_now(), "message": "connection refused"})
        status, doc = await call(gateway, "GET", "/_cipx/status")
        assert status == 200
        assert doc["problems"] == ["Opik is failing, spans wait in the local outbox: connection refused"]
        # An older error followed by a success (ISO stamps on both sides) is history, not a problem.
        gateway.shipper = FakeShipper(last_error={"at": "2026-01-01T00:00:00.000Z", "message": "old"},
                                      last_shipped={"at": iso_now(), "span_id": "s"})
        _, doc = await call(gateway, "GET", "/_cipx/status")
        assert doc["problems"] == []
    finally:
        gateway.shipper = real


def test_render_shows_the_retention_rule_the_oldest_kept_body_and_an_unmeetable_cap() -> None:
    spool = {"bytes": 5 * 1024**2, "calls": 10, "llm_calls": 9, "oldest_body_at": time.time() - 3 * 86400,
             "pruned_calls": 4, "last_prune": {"at": time.time(), "pruned": 4, "kept_unshipped": 2, "over_cap": True}}
    doc = {"pid": 42, "port": 9909, "uptime_s": 5, "version": "0.1.0", "upstream": "u", "capture": {},
           "spool": spool, "shipper": None, "sessions": 0, "problems": [], "retention": {"days": 90, "max_mb": 4}}
    line = next(ln for ln in render_status(STATUS_OK, doc).splitlines() if "retention" in ln)
    assert "bodies kept 90 days, spool capped at 4 MB" in line
    assert "oldest kept body " in line and "(3d0h ago)" in line
    assert "4 calls pruned (totals kept)" in line and "OVER THE CAP" in line
    doc.update(retention={"days": 0, "max_mb": 0}, spool={"oldest_body_at": None})
    line = next(ln for ln in render_status(STATUS_OK, doc).splitlines() if "retention" in ln)
    assert line.split("retention", 1)[1].strip() == "bodies kept forever; oldest kept body -"


def test_render_prints_the_times_of_iso_stamped_shipper_events() -> None:
    from opik_cipx.ship.privacy import iso_now

    shipper = {**FakeShipper().doc, "last_shipped": {"at": iso_now(), "span_id": "span-9"},
               "last_error": {"at": iso_now(), "message": "boom"}}
    doc = {"pid": 42, "port": 9909, "uptime_s": 5, "version": "0.1.0", "upstream": "u",
           "capture": {}, "spool": {}, "shipper": shipper, "sessions": 0, "problems": []}
    text = render_status(STATUS_OK, doc)
    shipped = next(ln for ln in text.splitlines() if "last shipped" in ln)
    error = next(ln for ln in text.splitlines() if "last Opik error" in ln)
    assert " ago)" in shipped and "span-9" in shipped and "- span" not in shipped
    assert " ago)" in error and error.rstrip().endswith("boom")


async def test_a_session_registration_is_stored_and_readable_by_other_stages(gateway: Any) -> None:
    payload = {"session_id": "sess-1", "cwd": "/work/p", "source": "startup", "env": {"OPIK_CC_PROJECT": "x"}, "git_branch": "main"}
    status, data = await call(gateway, "POST", "/_cipx/sessions", json=payload)
    assert status == 201 and data["ok"]
    got = gateway.sessions.get("sess-1")
    assert got is not None and got.cwd == "/work/p" and got.env == {"OPIK_CC_PROJECT": "x"} and got.git_branch == "main"
    _, doc = await call(gateway, "GET", "/_cipx/status")
    assert doc["sessions"] == 1


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"data": b'{"session_id": "s"}', "headers": {"Content-Type": "text/plain"}}, 415),
        ({"json": {"session_id": "s"}, "headers": {"Origin": "http://evil.example"}}, 403),
        ({"data": b"not json", "headers": JSON}, 400),
        ({"json": {"session_id": 5}}, 400),
        ({"data": b'{"session_id": "' + b"x" * 300_000 + b'"}', "headers": JSON}, 413),
    ],
)
async def test_registrations_a_browser_or_a_bug_could_send_are_refused(gateway: Any, kw: dict[str, Any], expected: int) -> None:
    status, _ = await call(gateway, "POST", "/_cipx/sessions", **kw)
    assert status == expected
    assert len(gateway.sessions) == 0


def test_render_down_says_not_running_and_mentions_a_stale_pidfile() -> None:
    text = render_status(STATUS_DOWN, {"state": "stopped", "stale_pidfile": True, "problems": []})
    assert text.startswith("opik-cipx: not running") and "pidfile" in text


def test_render_wedged_names_the_problem() -> None:
    doc = {"state": "running", "pid": 42, "port": 9909, "problems": ["pid 42 is alive but port 9909 did not answer within 2s (wedged)"]}
    text = render_status(STATUS_DEGRADED, doc)
    assert "NOT HEALTHY" in text and "wedged" in text and "42" in text


def test_render_running_shows_destination_queue_counters_and_telemetry() -> None:
    shipper = FakeShipper().doc
    doc = {
        "pid": 42, "port": 9909, "uptime_s": 3725, "version": "0.1.0", "upstream": "https://api.anthropic.com",
        "capture": {"captured": 11, "dropped": 1}, "spool": {"bytes": 3 * 1024 * 1024, "calls": 12, "llm_calls": 11, "unattributed_bytes": 40},
        "shipper": shipper, "sessions": 2, "problems": [],
    }
    text = render_status(STATUS_OK, doc)
    assert text.splitlines()[0] == "opik-cipx: running (pid 42, port 9909, up 1h02m)"
    for needle in ("workspace=team", "project=cc", "key=ab…yz", "3 spans", "span span-123", "captured 11", "shipped 7",
                   "dropped 3", "rejected 1", "unattributed 40 B", "telemetry", "3.0 MB", "on by default"):
        assert needle in text, needle
    assert "shipper: not running" in render_status(STATUS_OK, {**doc, "shipper": None})


def test_render_says_telemetry_off_when_the_shipper_reports_off() -> None:
    shipper = {**FakeShipper().doc, "telemetry": "off"}
    doc = {"pid": 42, "port": 9909, "uptime_s": 5, "version": "0.1.0", "upstream": "u",
           "capture": {}, "spool": {}, "shipper": shipper, "sessions": 0, "problems": []}
    line = next(ln for ln in render_status(STATUS_OK, doc).splitlines() if ln.strip().startswith("telemetry"))
    assert line.split()[-1] == "off"
    shipper["telemetry"] = "on"
    line = next(ln for ln in render_status(STATUS_OK, doc).splitlines() if ln.strip().startswith("telemetry"))
    assert line.split()[-1] == "on"
