"""Raw OpenAI Responses request bytes (what Codex sends) -> regions in the same categories.

Codex's body is ``{"type"?, "model", "instructions"?, "tools"?, "input": [items], ...settings}``.
Most of the context rides in ``input`` items, so the item, not the key, decides the bucket:

* ``instructions`` and ``developer`` messages -> ``system`` (``base instructions``, then one item
  per leading tag such as ``permissions instructions``); a ``<skills_instructions>`` message ->
  ``skills`` / ``listing``.
* ``tools`` and ``additional_tools`` items -> ``builtin_tools`` per tool (nested namespace tools
  by their own name), MCP tools (``mcp__<server>__<tool>`` or a ``mcp__<server>`` namespace) ->
  ``mcp`` / ``<server>/tool:<tool>``.
* user messages: ``# AGENTS.md instructions for <dir>`` -> ``memory`` / ``<dir>/AGENTS.md``;
  ``<environment_context>`` -> ``reminders`` / ``environment_context``; anything else ->
  ``user_prompt`` ``#1``, ``#2``…
* assistant messages -> ``assistant`` / ``text``; ``reasoning`` items -> ``assistant`` / ``thinking``.
* function, custom and shell tool calls and their outputs -> ``tool_io`` per tool (MCP: ``mcp`` /
  ``<server>/io:<tool>``). An output names its tool through ``call_id``; on a WebSocket turn
  the call lives in the previous response, so the caller passes what earlier responses of
  the session called (``calls``: call id -> tool name).
* ``configuration_update`` items and settings keys -> ``framing`` by key; anything unknown ->
  unattributed, measured, never guessed.

Every input item ends a possible cache prefix (OpenAI caches prompt prefixes without markers),
so each item's end is offered to :func:`allocate` as a breakpoint. Pure.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ..model import Usage
from .allocate import RatesLike, allocate, largest_remainder
from .partition import partition
from .rawjson import Malformed, skip_value, skip_ws
from .types import (
    ASSISTANT,
    BUILTIN_TOOLS,
    CATEGORIES,
    FRAMING,
    GROUP_MESSAGES,
    GROUP_SYSTEM,
    GROUP_TOOLS,
    MCP,
    MEMORY,
    REMINDERS,
    SKILLS,
    SYSTEM,
    TOOL_IO,
    UNATTRIBUTED,
    USER_PROMPT,
    Attribution,
    Breakpoint,
    ItemTotal,
)
from .walk_base import Members, WalkBase, split_mcp_name

SETTINGS = frozenset({
    "type", "model", "stream", "tool_choice", "parallel_tool_calls", "reasoning", "store", "include",
    "prompt_cache_key", "text", "client_metadata", "generate", "previous_response_id", "max_output_tokens",
    "temperature", "top_p", "service_tier", "metadata", "truncation", "user", "safety_identifier",
    "background", "conversation", "prompt", "stream_options", "top_logprobs", "max_tool_calls",
})
CALLS = frozenset({"function_call", "custom_tool_call", "local_shell_call", "tool_search_call"})
OUTPUTS = frozenset({"function_call_output", "custom_tool_call_output", "local_shell_call_output",
                     "tool_search_output"})
AGENTS_PREFIX = "# AGENTS.md instructions for "
SAMPLE = 200


def _leading_tag(text: str) -> str | None:
    if not text.startswith("<"):
        return None
    end = text.find(">", 1, 80)
    return text[1:end].strip() if end > 1 else None


class ResponsesWalk(WalkBase):
    def __init__(self, body: bytes, calls: Mapping[str, str]) -> None:
        super().__init__(body, None, None)
        self.calls = dict(calls)  # call id -> tool name, this body's calls added as they come
        self.prompts = 0
        self.developer = 0
        self.generate = True
        self.input_items = 0

    def run(self) -> None:
        p = skip_ws(self.s, 0)
        if p >= self.n:
            raise Malformed(p)
        self.good = skip_ws(self.s, self.obj(p, self.top_member))

    def top_member(self, key: str, kstart: int, vstart: int) -> int:
        s = self.s
        if key == "input" and s[vstart] == "[":
            end = self.arr(vstart, self.input_item)
            self.spans["messages"] = (vstart, end)
            return end
        if key == "tools" and s[vstart] == "[":
            end = self.arr(vstart, self.tool)
            self.spans["tools"] = (vstart, end)
            return end
        end = skip_value(s, vstart)
        if key == "instructions":
            self.add(vstart, end, SYSTEM, "base instructions")
            self.spans["system"] = (vstart, end)
        elif key in SETTINGS:
            if key == "generate" and s[vstart:end] == "false":
                self.generate = False
            self.add(kstart, end, FRAMING, key)
        else:
            self.unknown(kstart, end)
        return end

    # -- tools ----------------------------------------------------------------------
    def tool(self, _i: int, start: int, namespace: str | None = None) -> int:
        if self.s[start] != "{":
            end = skip_value(self.s, start)
            self.unknown(start, end)
            return end
        members, end = self.fields(start)
        kind, name = self.str_value(members.get("type")), self.str_value(members.get("name")) or "(unnamed)"
        nested = members.get("tools")
        if kind == "namespace" and nested is not None and self.s[nested[1]] == "[":
            self.arr(nested[1], lambda i, p: self.tool(i, p, name))
            for key in ("name", "description", "type"):
                span = members.get(key)
                if span is not None:
                    self.add(span[0], span[2], *self._tool_item(name, None))
            return end
        self.add(start, end, *self._tool_item(name, namespace))
        return end

    def _tool_item(self, name: str, namespace: str | None) -> tuple[str, str]:
        full = f"{namespace}__{name}" if namespace and namespace.startswith("mcp__") else name
        mcp = split_mcp_name(full, self.mcp_names) or (
            (namespace[5:], name) if namespace and namespace.startswith("mcp__") else None)
        if mcp is not None:
            return MCP, f"{mcp[0]}/tool:{mcp[1]}"
        if namespace is None and name.startswith("mcp__"):
            return MCP, f"{name[5:]}/tool:*"
        return BUILTIN_TOOLS, name

    # -- input items ------------------------------------------------------------------
    def input_item(self, _i: int, start: int) -> int:
        self.input_items += 1
        if self.s[start] != "{":
            end = skip_value(self.s, start)
            self.unknown(start, end)
            return end
        members, end = self.fields(start)
        kind = self.str_value(members.get("type"))
        if kind is None and "role" in members:
            kind = "message"
        if kind == "message":
            self._message(members, start, end)
        elif kind == "additional_tools" and "tools" in members and self.s[members["tools"][1]] == "[":
            self.arr(members["tools"][1], self.tool)
        elif kind == "reasoning":
            self.add(start, end, ASSISTANT, "thinking")
        elif kind in CALLS:
            name = self.str_value(members.get("name")) or ("shell" if kind == "local_shell_call" else "(unknown)")
            call_id = self.str_value(members.get("call_id"))
            if call_id:
                self.calls[call_id] = name
            self._tool_io(start, end, name, "calls", members.get("input") or members.get("arguments"))
        elif kind in OUTPUTS:
            call_id = self.str_value(members.get("call_id"))
            name = self.calls.get(call_id or "", "(unknown)")
            self._tool_io(start, end, name, "outputs", members.get("output"))
        elif kind == "configuration_update":
            self.add(start, end, FRAMING, "configuration_update")
        else:
            self.unknown(start, end)
        self.breakpoints.append(Breakpoint(GROUP_MESSAGES, end, "5m"))
        return end

    def _tool_io(self, start: int, end: int, name: str, counter: str, payload: tuple[int, int, int] | None) -> None:
        mcp = split_mcp_name(name, self.mcp_names)
        category, item = (MCP, f"{mcp[0]}/io:{mcp[1]}") if mcp else (TOOL_IO, name)
        self.add(start, end, category, item)
        detail = self.details[(category, item)]
        detail[counter] = detail.get(counter, 0) + 1
        detail[f"{counter}_bytes"] = detail.get(f"{counter}_bytes", 0) + (end - start)
        if payload is not None:
            detail[f"last_{counter[:-1]}"] = self.s[payload[1]:min(payload[2], payload[1] + SAMPLE)]

    def _message(self, members: Members, start: int, end: int) -> None:
        """A message's content parts each in their bucket (Codex packs AGENTS.md and the
        environment context into one user message); the message's own keys are framing."""
        role = self.str_value(members.get("role")) or ""
        content = members.get("content")
        if role not in ("developer", "system", "user", "assistant"):
            self.unknown(start, end)
            return
        if content is None:
            return
        if self.s[content[1]] != "[":
            self._part(role, content[1], content[2], self._text_at(content[1], content[2]))
            return

        def part(_i: int, pstart: int) -> int:
            pend = skip_value(self.s, pstart)
            self._part(role, pstart, pend, self._text_at(pstart, pend))
            return pend

        self.arr(content[1], part)

    def _part(self, role: str, start: int, end: int, text: str) -> None:
        if role in ("developer", "system"):
            self.developer += 1
            tag = _leading_tag(text)
            if tag == "skills_instructions":
                self.add(start, end, SKILLS, "listing")
            elif tag is not None:
                self.add(start, end, SYSTEM, tag)
            else:
                self.add(start, end, SYSTEM, "base instructions" if self.developer == 1 else "developer")
        elif role == "user":
            tag = _leading_tag(text)
            if text.startswith(AGENTS_PREFIX):
                where = text[len(AGENTS_PREFIX):].split("\n", 1)[0].strip().rstrip("/")
                path = f"{where}/AGENTS.md"
                digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
                self.add(start, end, MEMORY, path, {"path": path, "sha256_12": digest})
            elif tag == "user_instructions":  # older Codex releases wrap AGENTS.md this way
                self.add(start, end, MEMORY, "AGENTS.md")
            elif tag is not None and text.rstrip().endswith(f"</{tag.split()[0]}>"):
                # Harness context Codex adds (environment_context, turn_aborted, ...), not typed.
                self.add(start, end, REMINDERS, tag.split()[0])
            else:
                self.prompts += 1
                self.add(start, end, USER_PROMPT, f"#{self.prompts}", {"text": text[:SAMPLE], "chars": len(text)})
        else:
            self.add(start, end, ASSISTANT, "text")

    def _text_at(self, start: int, end: int) -> str:
        try:
            content = json.loads(self.b[start:end])
        except ValueError:
            return ""
        if isinstance(content, str):
            return content
        if isinstance(content, dict) and isinstance(content.get("text"), str):
            return str(content["text"])
        return ""


def attribute_responses(body: bytes, *, calls: Mapping[str, str] | None = None) -> Attribution:
    """Regions and byte totals of one Responses request; tokens stay 0 until :func:`allocate`."""
    walker = ResponsesWalk(bytes(body), calls or {})
    error: str | None = None
    try:
        walker.run()
    except Malformed as exc:
        error = f"not JSON from byte {max(walker.good, exc.pos)}"
    except (IndexError, RecursionError) as exc:
        error = f"{type(exc).__name__} after byte {walker.good}"
    except Exception as exc:  # noqa: BLE001 - a body must never break the caller; say where it stopped
        error = f"internal {type(exc).__name__}: {exc} after byte {walker.good}"
    n = walker.n
    limit = min(n, walker.good if error is None else max([walker.good] + [r[1] for r in walker.regions]))
    raw = sorted(r for r in walker.regions if r[1] <= limit)
    cuts = sorted({bp.pos for bp in walker.breakpoints} | {p for span in walker.spans.values() for p in span})
    regions, sizes = partition(raw, limit, cuts, (SYSTEM, "base instructions"))
    details = walker.details
    totals = {key: ItemTotal(key[0], key[1], size, detail=dict(details.get(key, {}))) for key, size in sizes.items()}
    unattributed = n - sum(sizes.values())
    if unattributed:
        totals[(UNATTRIBUTED, "")] = ItemTotal(UNATTRIBUTED, "", unattributed,
                                               detail={"parse_error": error} if error else {})
    categories = {name: ItemTotal(name, "") for name in CATEGORIES}
    for total in totals.values():
        cat = categories.setdefault(total.category, ItemTotal(total.category, ""))
        cat.bytes += total.bytes
        cat.detail["items"] = cat.detail.get("items", 0) + 1
    breakpoints = sorted(walker.breakpoints, key=operator.attrgetter("pos"))
    if "system" in walker.spans:
        breakpoints.append(Breakpoint(GROUP_SYSTEM, walker.spans["system"][1], "5m"))
    if "tools" in walker.spans:
        breakpoints.append(Breakpoint(GROUP_TOOLS, walker.spans["tools"][1], "5m"))
    return Attribution(
        regions=regions,
        body_bytes=n,
        unattributed_bytes=unattributed,
        call_kind="main" if walker.generate else "warmup",
        agent_id=None,
        items=list(totals.values()),
        categories=categories,
        breakpoints=sorted(breakpoints, key=operator.attrgetter("pos")),
        spans=dict(walker.spans),
        parse_error=error,
    )


def calls_in_output(content: list[dict[str, Any]]) -> dict[str, str]:
    """Call id -> tool name for the calls a response made (the next turn's outputs refer to them)."""
    out: dict[str, str] = {}
    for item in content:
        if isinstance(item, dict) and item.get("type") in CALLS and isinstance(item.get("call_id"), str):
            out[item["call_id"]] = str(item.get("name") or ("shell" if item.get("type") == "local_shell_call"
                                                             else "(unknown)"))
    return out


def output_blocks(content: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses output items as the content blocks :func:`allocate` weighs output tokens by."""
    blocks: list[dict[str, Any]] = []
    for item in content:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "message":
            text = "".join(p.get("text", "") for p in item.get("content") or [] if isinstance(p, dict))
            blocks.append({"type": "text", "text": text})
        elif kind == "reasoning":
            summary = "".join(p.get("text", "") for p in item.get("summary") or [] if isinstance(p, dict))
            blocks.append({"type": "thinking", "thinking": summary + str(item.get("encrypted_content") or "")})
        elif kind in CALLS:
            blocks.append({"type": "tool_use", "name": item.get("name") or "shell",
                           "input": item.get("input") or item.get("arguments") or item.get("action")})
    return blocks


Context = dict[tuple[str, str], int]  # (category, item) -> bytes of a turn's server-side context


class CallMemory:
    """What recent responses left server-side, by response id: the calls they made (a WebSocket
    turn's tool outputs name their tool through them) and the context a turn chained on them
    with ``previous_response_id`` inherits (bytes per item: earlier requests and outputs).
    Bounded; the capture chain keeps one per process."""

    def __init__(self, size: int = 512) -> None:
        self.size = size
        self._by_response: dict[str, tuple[dict[str, str], Context]] = {}

    def before(self, previous_response_id: str | None) -> dict[str, str]:
        return dict(self._by_response.get(previous_response_id or "", ({}, {}))[0])

    def context(self, previous_response_id: str | None) -> Context:
        return dict(self._by_response.get(previous_response_id or "", ({}, {}))[1])

    def remember(self, response_id: str | None, calls: Mapping[str, str], context: Context | None = None) -> None:
        if not response_id:
            return
        self._by_response.pop(response_id, None)
        self._by_response[response_id] = (dict(calls), dict(context or {}))
        while len(self._by_response) > self.size:
            del self._by_response[next(iter(self._by_response))]


def context_after(inherited: Context, attr: Attribution, content: list[dict[str, Any]]) -> Context:
    """The server-side context after one turn: what it inherited, its own request, its output."""
    out = dict(inherited)
    for total in attr.items:
        if total.bytes and total.category != UNATTRIBUTED:
            out[(total.category, total.item)] = out.get((total.category, total.item), 0) + total.bytes
    for item in content:
        kind = item.get("type")
        key = ((ASSISTANT, "text") if kind == "message" else (ASSISTANT, "thinking") if kind == "reasoning"
               else (TOOL_IO, str(item.get("name") or "shell")) if kind in CALLS else None)
        if key is not None:
            out[key] = out.get(key, 0) + len(json.dumps(item, separators=(",", ":")))
    return out


def allocate_chained(attr: Attribution, usage: Usage | None, rates: RatesLike | None,
                     content: list[dict[str, Any]], inherited: Context) -> Attribution:
    """:func:`allocate`, for a turn whose billed prompt includes server-side context it did not send.

    ``usage.input_tokens`` covers the whole chain, but the body holds only the new items: the
    tokens are shared between the inherited context (by its bytes, items kept apart with
    ``inherited_bytes``) and this body, the inherited part read from cache first (it is the
    prefix OpenAI caches), so nothing of the old context is charged to the new input.
    """
    if not inherited or usage is None or not usage.prompt_tokens:
        return allocate(attr, usage, rates, content)
    prior_bytes = sum(inherited.values())
    prior_tokens = usage.prompt_tokens * prior_bytes // (prior_bytes + attr.body_bytes)
    read = min(usage.cache_read_input_tokens, prior_tokens)
    fresh = min(usage.input_tokens, prior_tokens - read)
    own = replace(usage, cache_read_input_tokens=usage.cache_read_input_tokens - read,
                  input_tokens=usage.input_tokens - fresh)
    out = allocate(attr, own, rates, content)
    keys = list(inherited)
    weights = [inherited[k] for k in keys]
    by_key = {(t.category, t.item): t for t in out.items}
    for key, r, f, size in zip(keys, largest_remainder(read, weights), largest_remainder(fresh, weights),
                               weights, strict=True):
        cost = None if rates is None else r * rates.cache_read + f * rates.input
        total = by_key.get(key)
        if total is None:
            total = by_key[key] = ItemTotal(key[0], key[1], 0, 0, None if rates is None else 0.0)
            out.items.append(total)
        total.tokens += r + f
        total.detail["inherited_bytes"] = size
        total.detail["inherited_tokens"] = r + f
        if total.cost_usd is not None and cost is not None:
            total.cost_usd += cost
        cat = out.categories.setdefault(key[0], ItemTotal(key[0], "", cost_usd=None if rates is None else 0.0))
        cat.tokens += r + f
        if cat.cost_usd is not None and cost is not None:
            cat.cost_usd += cost
    # Kept with the stored attribution, so a later re-analysis (viewer, explain) shares alike.
    out.cache_split["inherited"] = {"bytes": prior_bytes, "tokens": {"cache_read": read, "input": fresh},
                                    "context": [[c, i, b] for (c, i), b in inherited.items()]}
    return out


def stored_chain(cache_split: Mapping[str, Any]) -> tuple[dict[str, str], Context]:
    """The ``calls`` and inherited context a stored attribution was made with (see analyze)."""
    calls = cache_split.get("calls")
    context = (cache_split.get("inherited") or {}).get("context") or []
    return (dict(calls) if isinstance(calls, dict) else {},
            {(str(c), str(i)): int(b) for c, i, b in context if isinstance(b, int)})


def previous_response_id(body: bytes) -> str | None:
    """The top-level ``previous_response_id`` of a Responses body, without parsing the input."""
    at = body.find(b'"previous_response_id"')
    if at < 0:
        return None
    colon = body.find(b":", at)
    start = body.find(b'"', colon + 1)
    end = body.find(b'"', start + 1)
    if colon < 0 or start < 0 or end < 0 or body[colon + 1:start].strip():
        return None
    return body[start + 1:end].decode("utf-8", "replace")
