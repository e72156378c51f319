"""Replay recorded Claude Code requests (tests/fixtures/claude_code) through a running gateway."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "claude_code"


def recorded(scenario: str) -> list[tuple[str, bytes, dict[str, str]]]:
    """``(label, body, headers)`` of each recorded request, in order; Host and length dropped."""
    out = []
    for body_path in sorted((FIXTURES / scenario).glob("[0-9][0-9]-*.json")):
        if body_path.name.endswith(".meta.json"):
            continue
        meta = json.loads(body_path.with_name(body_path.name[:-5] + ".meta.json").read_text())
        headers = {k: v for k, v in meta["headers"] if k.lower() not in ("content-length", "host")}
        out.append((meta["label"], body_path.read_bytes(), headers))
    return out


async def replay(gw: Any, scenario: str) -> list[str]:
    """Send a recorded Claude Code session through the gateway; return the labels in order."""
    labels = []
    async with aiohttp.ClientSession() as s:
        for label, body, headers in recorded(scenario):
            async with s.post(gw.url + "/v1/messages?beta=true", data=body,
                              headers={**headers, "x-api-key": "sk-ant-test"}) as r:
                assert r.status == 200
                await r.read()
            labels.append(label)
    assert gw.capture is not None and await gw.capture.drain(30)
    return labels
