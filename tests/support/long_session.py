"""A long synthetic Claude Code session grown from a real recorded request, turn by turn.

Shared by ``bench/spool_bench.py`` and the incremental-attribution tests. Each turn
appends what Claude Code would append after one tool round: the assistant's text and
tool_use, then the user's tool_result; the ``cache_control`` marker moves to the newest
block, as Claude Code moves it every turn. Tool results are mixed as in real sessions:
mostly under 2 KB, some 5-20 KB. Bodies are compact JSON (``JSON.stringify``), keys in
the recording's order (``messages`` before ``system`` and ``tools``).
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from opik_cipx.proxy.recorder import HeaderList, Recorder

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "claude_code"
SEED = FIXTURES / "opus48" / "02-after-bash.json"
SESSION_ID = "a0a7a7c3-a4dd-4145-a443-e9786d95821f"  # the recording's own session id

_WORDS = ("stock", "aisle", "widget", "report", "inventory", "warehouse", "check", "record", "mistake",
          "total", "shelf", "order", "count", "pallet", "invoice", "<tag>", "{\"k\": 1}", "path/to/file.py")
_TOOLS = ("Bash", "Read", "Grep", "Edit", "Glob")


def _text(rng: random.Random, size: int) -> str:
    out: list[str] = []
    n = 0
    while n < size:
        line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14)))
        out.append(line)
        n += len(line) + 1
    return "\n".join(out)[:size]


def result_size(rng: random.Random) -> int:
    """Mostly under 2 KB, three in ten between 5 and 20 KB (a file read, a long log)."""
    if rng.random() < 0.3:
        return rng.randint(5 * 1024, 20 * 1024)
    return rng.randint(100, 2 * 1024)


def _strip_cache_control(messages: list[dict[str, Any]]) -> None:
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            for block in content:
                if isinstance(block, dict):
                    block.pop("cache_control", None)


def turn(rng: random.Random, n: int, result_bytes: int | None = None) -> list[dict[str, Any]]:
    """One tool round: an assistant message (text + tool_use) and the user's tool_result."""
    tool_id = f"toolu_{n:024d}"
    name = _TOOLS[n % len(_TOOLS)]
    size = result_size(rng) if result_bytes is None else result_bytes
    return [
        {"role": "assistant", "content": [
            {"type": "text", "text": _text(rng, rng.randint(80, 600))},
            {"type": "tool_use", "id": tool_id, "name": name,
             "input": {"command": f"cat report{n}.txt", "description": "read the report"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tool_id, "content": _text(rng, size), "is_error": n % 17 == 0},
        ]},
    ]


def dump(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def grow(turns: int, *, seed: int = 7, base: Path = SEED) -> Iterator[bytes]:
    """The request bodies of a session of ``turns`` calls, each the previous plus one tool round."""
    rng = random.Random(seed)
    body = json.loads(base.read_bytes())
    for n in range(1, turns + 1):
        _strip_cache_control(body["messages"])
        body["messages"] += turn(rng, n)
        last = body["messages"][-1]["content"][-1]
        last["cache_control"] = {"type": "ephemeral"}
        yield dump(body)


def with_turn(body: bytes, added: int, *, seed: int = 11) -> bytes:
    """``body`` plus one tool round whose result is ``added`` bytes (the marker moved onto it)."""
    rng = random.Random(seed)
    parsed = json.loads(body)
    _strip_cache_control(parsed["messages"])
    parsed["messages"] += turn(rng, 10_000 + seed, result_bytes=added)
    parsed["messages"][-1]["content"][-1]["cache_control"] = {"type": "ephemeral"}
    return dump(parsed)


def edited(body: bytes, how: str) -> bytes:
    """``body`` changed in a way that breaks the shared prefix with its predecessor."""
    parsed = json.loads(body)
    if how == "system":
        system = parsed["system"]
        if isinstance(system, list):
            system[-1]["text"] = system[-1]["text"] + "\nA changed line of the system prompt."
        else:
            parsed["system"] = system + "\nA changed line."
    elif how == "compaction":
        # What follows /compact: one user message holding the summary, then the new turn.
        parsed["messages"] = [{"role": "user", "content": [
            {"type": "text", "text": "This session is being continued from a previous conversation. Summary: "
                                     + _text(random.Random(3), 3000)}]}]
    elif how == "early_edit":
        first = parsed["messages"][0]
        content = first["content"]
        if isinstance(content, list):
            content[0] = {**content[0], "text": content[0]["text"] + " (edited)"}
        else:
            first["content"] = content + " (edited)"
    elif how == "cache_control":
        # The marker moved to an early message, and off the newest one.
        _strip_cache_control(parsed["messages"])
        for message in parsed["messages"]:
            if isinstance(message.get("content"), list) and message["content"]:
                message["content"][0]["cache_control"] = {"type": "ephemeral"}
                break
    else:
        raise ValueError(how)
    return dump(copy.deepcopy(parsed))


def recorded_call(body: bytes, n: int, model: str = "claude-opus-4-8") -> Recorder:
    """A finished call as the relay hands it to capture: request, a JSON answer with usage."""
    rec = Recorder("POST", "/v1/messages?beta=true", HeaderList([
        (b"content-type", b"application/json"),
        (b"x-claude-code-session-id", SESSION_ID.encode()),
        (b"user-agent", b"claude-cli/2.1.197 (external, sdk-cli)"),
    ]))
    rec.body = body
    rec.response_head(200, ((b"content-type", b"application/json"),))
    tokens = len(body) // 4
    rec.chunk(json.dumps({
        "id": f"msg_{n:020d}", "type": "message", "role": "assistant", "model": model, "stop_reason": "tool_use",
        "content": [{"type": "text", "text": f"turn {n}: let me look."}],
        "usage": {"input_tokens": 3, "cache_creation_input_tokens": 1500, "cache_read_input_tokens": max(0, tokens - 1500),
                  "output_tokens": 120},
    }).encode())
    rec.finish()
    return rec
