"""Raw ``/v1/messages`` request bytes -> regions, following Claude Code's wire layout.

The walker descends only as deep as attribution needs (top-level keys, system
blocks, tools, messages, content blocks, tool-result blocks) and treats every
deeper value as one opaque span skipped in C. It records content regions; the
bytes between them inside well-formed structure (keys, quotes, commas, block
types, ids) become ``framing``, and members it does not know are left out so
they count as unattributed. When the body stops being JSON, everything up to
the last well-formed position keeps its regions and the rest is unattributed.
"""

from __future__ import annotations

import bisect
import operator
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

from . import rawjson
from .partition import PROMPT, partition
from .rawjson import Malformed, skip_value, skip_ws, string_end, value
from .sections import (
    BILLING_PREFIX,
    TITLE_PROMPT,
    Known,
    Section,
    UserState,
    reminder_sections,
    system_message_sections,
    user_text_sections,
)
from .types import (
    AGENTS,
    ASSISTANT,
    BUILTIN_TOOLS,
    CATEGORIES,
    FRAMING,
    GROUP_MESSAGES,
    GROUP_SYSTEM,
    GROUP_TAIL,
    GROUP_TOOLS,
    MCP,
    MEDIA,
    REMINDERS,
    SYSTEM,
    TOOL_IO,
    UNATTRIBUTED,
    Attribution,
    Breakpoint,
    ItemTotal,
    Layout,
)

# Top-level keys that carry settings rather than context; each is one framing item.
FRAMING_KEYS = frozenset(
    {
        "model",
        "max_tokens",
        "stream",
        "metadata",
        "thinking",
        "context_management",
        "output_config",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "tool_choice",
        "service_tier",
        "container",
        "betas",
        "speed",
        "inference_geo",
    }
)
# One sre scan for the literal finds the candidates; the name is read with
# _MCP_NAME and the `"name":` before it checked in Python on the few hits.
_MCP_PREFIX = re.compile("mcp__")
_MCP_NAME = re.compile(r'mcp__[^"\\]+(?=")')
_NAME_KEY = re.compile(r'"name"[ \t\n\r]*:[ \t\n\r]*"$')
_INVOKED_COMMAND = re.compile(r"<command-name>/?([^<\s]+)</command-name>")
_REMINDER_TAG = "<system-reminder>"
_TAG_NAMES = (_REMINDER_TAG, "<command-name>")
_TAGS = re.compile(r"<(?:system-reminder|command-name)>")
_TAG_HOPS = 256  # '<' visited one by one before the tag scan hands over to sre
# One match per object member: optional blanks, the key, the colon, blanks up to the value.
_MEMBER = re.compile(r'[ \t\n\r]*"([^"\\]*(?:\\.[^"\\]*)*)"[ \t\n\r]*:[ \t\n\r]*', re.S)
_OBJ_SEP = re.compile(r"[ \t\n\r]*([,}])")
_OBJ_CLOSE = re.compile(r"[ \t\n\r]*}")
# Fast paths for the compact JSON Claude Code sends: one C-level match per message
# or block instead of a member-by-member walk. Anything else takes the generic path.
_MESSAGE_HEAD = re.compile(r'\{"role":"(user|assistant|system)","content":')
_MESSAGE_BLOCKS = re.compile(r'\{"role":"(user|assistant|system)","content":\[(?=\{)')
# One match tells the block kind (by ``lastindex``) and reaches its value.
_BLOCK_HEAD = re.compile(
    r'\{"(?:type":"(?:(text)","text":"'
    r'|tool_use","id":"([^"\\]*)","name":"([^"\\]*)","input":'
    r'|tool_result","tool_use_id":"([^"\\]*)","content":)'
    r'|tool_use_id":"([^"\\]*)","type":"tool_result","content":)'
)
_HEAD_TEXT, _HEAD_USE_ID, _HEAD_USE_NAME = 1, 2, 3  # groups 4 and 5: a tool_result's tool_use_id
_BLOCK_TAIL = re.compile(r'(?:,"is_error":(true|false))?(?:,"cache_control":(\{[^{}"]*(?:"[^"\\]*"[^{}"]*)*\}))?\}')
_NO_ERROR_TAIL = ',"is_error":false}'
_BLANK = " \t\n\r"
_AGENT_TOOLS = frozenset({"Agent", "Task"})
ToolRef = tuple[str, Any]  # (tool name, its tool_use input)
_UNKNOWN_TOOL: ToolRef = ("(unknown)", None)
_ASSISTANT_TEXT = (ASSISTANT, "text")
_SAMPLE_CHARS = 200
# tool_io's detail keys (count, bytes, sample) for a tool input and a tool result.
IoKeys = tuple[str, str, str]
INPUT: IoKeys = ("inputs", "input_bytes", "input_sample")
RESULT: IoKeys = ("results", "result_bytes", "result_sample")


def split_mcp_name(name: str, known: set[str] | frozenset[str] = frozenset()) -> tuple[str, str] | None:
    """``mcp__<server>__<tool>`` -> (server, tool); None when it is not an MCP name.

    The tool part never contains ``__`` but the server may hold underscores, so
    every split leaving a ``__``-free tool is a candidate; the one whose server
    the most other known tool names share wins, then the longest server.
    """
    if not name.startswith("mcp__"):
        return None
    rest = name[5:]
    candidates: list[tuple[str, str]] = []
    i = rest.find("__", 1)
    while i != -1:
        tool = rest[i + 2 :]
        if tool and "__" not in tool:
            candidates.append((rest[:i], tool))
        i = rest.find("__", i + 1)
    if not candidates:
        return None
    if len(candidates) == 1 or not known:
        return candidates[-1]

    def support(cand: tuple[str, str]) -> tuple[int, int]:
        prefix = f"mcp__{cand[0]}__"
        shared = sum(1 for other in known if other.startswith(prefix) and "__" not in other[len(prefix) :])
        return shared, len(cand[0])

    return max(candidates, key=support)


def _scan_tags(s: str) -> tuple[list[int], frozenset[str]]:
    """Offsets of every ``<system-reminder>`` tag, and the names in every ``<command-name>`` tag.

    One pass over the body for both, instead of a search per tool result plus
    ``in`` and ``findall`` over the body for commands. A command match never
    contains another tag, so these are exactly the names ``findall`` finds.

    ``str.find`` (memchr) hops from ``<`` to ``<`` while they are few, as in
    prose and logs; past ``_TAG_HOPS`` of them (code, markup) the rest is one
    sre scan, whose ``<`` prefix search is slower than memchr but has no
    Python step per ``<``. Either way, the same tags.
    """
    reminders: list[int] = []
    commands: set[str] = set()
    command = _INVOKED_COMMAND.match
    find, at = s.find, s.startswith
    i = find("<")
    for _ in range(_TAG_HOPS):
        if i == -1:
            break
        if not at(_TAG_NAMES, i):
            i = find("<", i + 1)
        elif s[i + 1] == "s":
            reminders.append(i)
            i = find("<", i + len(_REMINDER_TAG))
        else:
            if (c := command(s, i)) is not None:
                commands.add(c.group(1))
            i = find("<", i + len("<command-name>"))
    else:
        for m in _TAGS.finditer(s, i) if i != -1 else ():
            if m.end() - m.start() == len(_REMINDER_TAG):
                reminders.append(m.start())
            elif (c := command(s, m.start())) is not None:
                commands.add(c.group(1))
    return reminders, frozenset(commands)


class _Walker:
    # The compact-JSON fast paths; tests turn them off to check they agree with the general walk.
    fast = True

    def __init__(
        self, body: bytes, headers: Mapping[str, str] | None, path: str | None, commands: Collection[str]
    ) -> None:
        self.b = body
        self.s = body.decode("latin-1")
        self.n = len(body)
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}
        self.path = path
        # (start, end, category or None for unknown, item)
        self.regions: list[tuple[int, int, str | None, str]] = []
        self.details: dict[tuple[str, str], dict[str, Any]] = {}
        self.breakpoints: list[Breakpoint] = []
        self.spans: dict[str, tuple[int, int]] = {}
        self.good = 0
        self.mcp_names = self._mcp_names()
        self.reminders, invoked = _scan_tags(self.s)  # reminders: sorted offsets
        self.known = Known(
            servers=frozenset(sp[0] for sp in map(self._split, self.mcp_names) if sp),
            commands=frozenset(c.lstrip("/") for c in commands) | invoked,
        )
        self.tool_uses: dict[str, tuple[str, Any]] = {}  # tool_use id -> (name, input)
        # tool name -> tool_item(); not for Agent/Task, whose item depends on the input.
        self.tool_items: dict[str, tuple[str, str, dict[str, Any]]] = {}
        self.pending_samples: dict[tuple[str, str, str], tuple[int, int]] = {}
        self.user_state = UserState()
        self.billing_subagent = False
        self.title = False
        self.tool_count = 0
        self.message_count = 0
        self.compaction_message: int | None = None
        # Where each message starts and whether it is the assistant's; "metadata"'s value.
        self.message_starts: list[tuple[int, bool]] = []
        self.metadata: tuple[int, int] | None = None

    def _mcp_names(self) -> set[str]:
        """Every ``"name": "mcp__…"`` value in the body (tool definitions and calls)."""
        s, out = self.s, set()
        name, key = _MCP_NAME.match, _NAME_KEY.search
        for hit in _MCP_PREFIX.finditer(s):  # sre's literal-prefix search: a little faster than a str.find loop
            i = hit.start()
            m = name(s, i)
            if m is not None and key(s, max(0, i - 16), i):
                out.add(m.group())
        return out

    # -- primitives -----------------------------------------------------------------

    def _split(self, name: str) -> tuple[str, str] | None:
        return split_mcp_name(name, self.mcp_names)

    def add(self, start: int, end: int, category: str | None, item: str, detail: dict[str, Any] | None = None) -> None:
        if end <= start:
            return
        self.regions.append((start, end, category, item))
        if category is not None:
            key = (category, item)
            slot = self.details.get(key)
            if slot is None:
                slot = self.details[key] = {}
            if detail:
                slot.update(detail)

    def obj(self, pos: int, member: Callable[[str, int, int], int], resume: int | None = None) -> int:
        """Walk the object at ``pos``; ``member(key, key_start, value_start)`` returns the value's end.

        ``resume``: the members before this offset were already consumed by a fast path.
        """
        s = self.s
        if s[pos] != "{":
            raise Malformed(pos)
        p = pos + 1 if resume is None else resume
        match_member = _MEMBER.match
        match_sep = _OBJ_SEP.match
        while True:
            m = match_member(s, p)
            if m is None:
                close = _OBJ_CLOSE.match(s, p)
                if close is not None and p == pos + 1 and resume is None:
                    return close.end()
                raise Malformed(p)
            key = m.group(1)
            if "\\" in key:
                key = rawjson.decode_string(self.b[m.start(1) : m.end(1)]) or key
            vend = member(key, m.start(1) - 1, m.end())
            if vend > self.good:
                self.good = vend
            sep = match_sep(s, vend)
            if sep is None:
                raise Malformed(vend)
            if sep.group(1) == "}":
                return sep.end()
            p = sep.end()

    def arr(self, pos: int, element: Callable[[int, int], int]) -> int:
        """Walk the array at ``pos``; ``element(index, start)`` returns the element's end."""
        s = self.s
        if s[pos] != "[":
            raise Malformed(pos)
        p = pos + 1
        if s[p] in _BLANK:
            p = skip_ws(s, p)
        if s[p] == "]":
            return p + 1
        i = 0
        while True:
            end = element(i, p)
            if end > self.good:
                self.good = end
            c = s[end]
            if c in _BLANK:
                p = skip_ws(s, end)
                c = s[p]
            else:
                p = end
            if c == ",":
                p += 1
                if s[p] in _BLANK:
                    p = skip_ws(s, p)
                i += 1
            elif c == "]":
                return p + 1
            else:
                raise Malformed(p)

    def fields(self, pos: int, direct: Callable[[dict[str, tuple[int, int, int]], str, int], int | None] | None = None) -> tuple[dict[str, tuple[int, int, int]], int]:
        """Members of a block as {key: (key_start, value_start, value_end)} (values skipped)."""
        out: dict[str, tuple[int, int, int]] = {}

        def member(key: str, kstart: int, vstart: int) -> int:
            end = direct(out, key, vstart) if direct else None
            if end is None:
                end = skip_value(self.s, vstart)
            out[key] = (kstart, vstart, end)
            return end

        return out, self.obj(pos, member)

    def str_value(self, span: tuple[int, int, int] | None) -> str | None:
        if span is None or self.s[span[1]] != '"':
            return None
        text = self.s[span[1] + 1 : span[2] - 1]
        if text.isascii() and "\\" not in text:
            return text  # the latin-1 view is exact for plain ASCII
        return rawjson.decode_string(self.b[span[1] + 1 : span[2] - 1])

    def text_regions(self, start: int, end: int, sections: list[Section]) -> None:
        """Regions for sections of the decoded string token ``[start, end)`` (quotes included)."""
        raw = self.b[start + 1 : end - 1]
        bounds = sorted({sec.start for sec in sections} | {sec.end for sec in sections})
        offsets = dict(zip(bounds, rawjson.char_to_byte_offsets(raw, bounds)))
        base = start + 1
        for sec in sections:
            self.add(base + offsets[sec.start], base + offsets[sec.end], sec.category, sec.item, sec.detail)

    def unknown(self, start: int, end: int) -> None:
        self.add(start, end, None, "")

    def cache_marker(self, block: dict[str, tuple[int, int, int]], group: int, block_end: int) -> None:
        span = block.get("cache_control")
        if span is None:
            return
        try:
            marker = value(self.s, span[1])[0]
        except Malformed:
            return
        ttl = marker.get("ttl") if isinstance(marker, dict) else None
        self.breakpoints.append(Breakpoint(group, block_end, ttl if ttl in ("5m", "1h") else "5m"))

    # -- top level ------------------------------------------------------------------

    def run(self) -> None:
        s = self.s
        p = skip_ws(s, 0)
        if p >= self.n:
            raise Malformed(p)
        end = self.obj(p, self.top_member)
        self.good = skip_ws(s, end)

    def top_member(self, key: str, kstart: int, vstart: int) -> int:
        if key == "messages" and self.s[vstart] == "[":
            end = self.messages(vstart)
            self.spans["messages"] = (vstart, end)
            return end
        if key == "system":
            if self.s[vstart] == "[":
                end = self.arr(vstart, self.system_block)
            else:
                end = skip_value(self.s, vstart)
                if self.s[vstart] == '"':
                    self.system_text(0, vstart, end)
                else:
                    self.unknown(vstart, end)
            self.spans["system"] = (vstart, end)
            return end
        if key == "tools" and self.s[vstart] == "[":
            end = self.arr(vstart, self.tool)
            self.spans["tools"] = (vstart, end)
            return end
        end = skip_value(self.s, vstart)
        if key == "metadata":
            self.metadata = (vstart, end)
        if key in FRAMING_KEYS:
            self.add(kstart, end, FRAMING, key)
        else:
            self.unknown(kstart, end)
        return end

    # -- system ---------------------------------------------------------------------

    def system_block(self, index: int, pos: int) -> int:
        if self.s[pos] != "{":
            end = skip_value(self.s, pos)
            self.unknown(pos, end)
            return end
        block, end = self.fields(pos)
        text = block.get("text")
        for key, (kstart, vstart, vend) in block.items():
            if key not in ("type", "text", "cache_control"):
                self.unknown(kstart, vend)
        if text is not None and self.s[text[1]] == '"':
            self.system_text(index, text[1], text[2])
        elif text is not None:
            self.unknown(text[0], text[2])
        self.cache_marker(block, GROUP_SYSTEM, end)
        return end

    def system_text(self, index: int, start: int, end: int) -> None:
        head = self.s[start + 1 : min(end - 1, start + 1 + 400)]
        if head.startswith(BILLING_PREFIX):
            line = rawjson.decode_string(self.b[start + 1 : end - 1]) or head
            self.billing_subagent = "cc_is_subagent=true" in line
            self.add(start + 1, end - 1, SYSTEM, "billing", {"text": line[:_SAMPLE_CHARS]})
            return
        if TITLE_PROMPT in head:
            self.title = True
        elif index <= 1 and end - start < 12 * 300:  # 12 bytes: the widest escaped char
            text = rawjson.decode_string(self.b[start + 1 : end - 1])
            if text is not None and len(text) < 300 and "\n" not in text:  # a one-line identity sentence
                self.add(start + 1, end - 1, SYSTEM, "identity", {"text": text})
                return
        self.add(start + 1, end - 1, SYSTEM, PROMPT)

    # -- tools ----------------------------------------------------------------------

    def tool(self, index: int, pos: int) -> int:
        if self.s[pos] != "{":
            end = skip_value(self.s, pos)
            self.unknown(pos, end)
            return end
        spec, end = value(self.s, pos)
        name = spec.get("name") if isinstance(spec, dict) else None
        if not isinstance(name, str):
            self.unknown(pos, end)
            return end
        self.tool_count += 1
        deferred = spec.get("defer_loading") is True
        split = self._split(name)
        if split:
            server, tool = split
            self.add(pos, end, MCP, f"{server}/tool:{tool}", {"server": server, "tool": tool, "deferred": deferred})
        else:
            self.add(pos, end, BUILTIN_TOOLS, name, {"tool": name, "deferred": deferred})
        marker = spec.get("cache_control")
        if isinstance(marker, dict):
            ttl = marker.get("ttl")
            self.breakpoints.append(Breakpoint(GROUP_TOOLS, end, ttl if ttl in ("5m", "1h") else "5m"))
        return end

    # -- messages -------------------------------------------------------------------

    def messages(self, pos: int) -> int:
        """The messages array: :meth:`arr` over :meth:`message`, with the usual compact message
        (``{"role":…,"content":[`` blocks ``]}``) walked right here, without the calls per message."""
        self.message_starts = []  # a repeated "messages" key: the last one counts, as in json.loads
        if not self.fast:
            return self.arr(pos, self.message)
        s = self.s
        if s[pos] != "[":
            raise Malformed(pos)
        p = pos + 1
        if s[p] in _BLANK:
            p = skip_ws(s, p)
        if s[p] == "]":
            return p + 1
        head = _MESSAGE_BLOCKS.match
        index = 0
        while True:
            m = head(s, p)
            if m is None:
                end = self.message(index, p)
            else:  # what message() and content() do for it
                self.message_count = index + 1
                role = m.group(1)
                self.message_starts.append((p, role == "assistant"))
                if role == "user":
                    self.user_state.pending_skill = None
                    self.user_state.expect_body = False
                end = self.block_run(role, m.end(), index, None)  # the head ends at the first block
                end = end + 1 if s.startswith("}", end) else self.message_rest(p, end)
            if end > self.good:
                self.good = end
            c = s[end]
            if c == ",":  # compact: the usual case first
                p = end + 1
                if s[p] in _BLANK:
                    p = skip_ws(s, p)
                index += 1
                continue
            if c in _BLANK:
                p = skip_ws(s, end)
                c = s[p]
            else:
                p = end
            if c == ",":
                p += 1
                if s[p] in _BLANK:
                    p = skip_ws(s, p)
                index += 1
            elif c == "]":
                return p + 1
            else:
                raise Malformed(p)

    def message(self, index: int, pos: int) -> int:
        self.message_count = index + 1
        head = _MESSAGE_HEAD.match(self.s, pos) if self.fast else None
        if head is not None:
            self.message_starts.append((pos, head.group(1) == "assistant"))
            end = self.content(head.group(1), head.end(), index)
            return end + 1 if self.s.startswith("}", end) else self.message_rest(pos, end)
        if self.s[pos] != "{":
            self.message_starts.append((pos, False))
            end = skip_value(self.s, pos)
            self.unknown(pos, end)
            return end
        role: list[str | None] = [None]
        deferred: list[int] = []

        def member(key: str, kstart: int, vstart: int) -> int:
            if key == "role":
                v, end = value(self.s, vstart)
                role[0] = v if isinstance(v, str) else None
                return end
            if key == "content":
                if role[0] is None:
                    deferred.append(vstart)
                    return skip_value(self.s, vstart)
                return self.content(role[0], vstart, index)
            end = skip_value(self.s, vstart)
            self.unknown(kstart, end)
            return end

        end = self.obj(pos, member)
        self.message_starts.append((pos, role[0] == "assistant"))
        for vstart in deferred:
            self.content(role[0] or "", vstart, index)
        return end

    def message_rest(self, pos: int, end: int) -> int:
        """The members after a fast path's ``content`` (ending at ``end``): unknown, so unattributed."""
        sep = _OBJ_SEP.match(self.s, end)
        if sep is None or sep.group(1) != ",":
            raise Malformed(end)

        def extra(key: str, kstart: int, vstart: int) -> int:
            vend = skip_value(self.s, vstart)
            self.unknown(kstart, vend)
            return vend

        return self.obj(pos, extra, resume=sep.end())

    def content(self, role: str, pos: int, index: int) -> int:
        s = self.s
        if s[pos] == '"':
            end = string_end(s, pos)
            self.text(role, pos, end, index, None)
            return end
        if s[pos] == "[":
            if role == "user":
                self.user_state.pending_skill = None
                self.user_state.expect_body = False
            return self.blocks(role, pos, index, None)
        end = skip_value(s, pos)
        self.unknown(pos, end)
        return end

    def tool_item(self, tool: str, params: Any = None) -> tuple[str, str, dict[str, Any]]:
        """(category, item, base detail) of a tool's calls and results; the detail is shared: copy to keep it."""
        if tool in _AGENT_TOOLS:
            # A subagent's brief and answer are the custom agent's cost, not a tool's.
            kind = params.get("subagent_type") if isinstance(params, dict) else None
            kind = kind if isinstance(kind, str) and kind else "general-purpose"
            return AGENTS, f"{kind}/io", {"agent": kind, "tool": tool}
        found = self.tool_items.get(tool)
        if found is None:
            split = self._split(tool)
            if split:
                found = (MCP, f"{split[0]}/io:{split[1]}", {"server": split[0], "tool": split[1]})
            else:
                found = (TOOL_IO, tool, {"tool": tool})
            self.tool_items[tool] = found
        return found

    def tool_io(self, tool: str, start: int, end: int, kind: IoKeys, params: Any = None, quoted: bool = False) -> None:
        """Region and counts for a tool input or result (``kind``: INPUT / RESULT).

        ``quoted``: the value is a string token, whose quotes stay out of the region.
        """
        token = (start, end)
        if quoted:
            start, end = start + 1, end - 1
        category, item, base = self.tool_items.get(tool) or self.tool_item(tool, params)
        count_key, bytes_key, sample_key = kind
        key = (category, item)
        slot = self.details.get(key)
        if end > start:
            self.regions.append((start, end, category, item))
            if slot is None:
                slot = self.details[key] = {}
            slot.update(base)
            # Only the latest sample is kept: decode it once, at the end.
            self.pending_samples[(category, item, sample_key)] = token
        elif slot is None:
            slot = self.details[key] = dict(base)
        slot[count_key] = slot.get(count_key, 0) + 1
        slot[bytes_key] = slot.get(bytes_key, 0) + (end - start)

    def sample(self, start: int, end: int) -> str:
        """Up to 200 chars of a value's text, decoding only its head."""
        if self.s[start] != '"':
            return self.b[start : min(end, start + 12 * _SAMPLE_CHARS)].decode("utf-8", "replace")[:_SAMPLE_CHARS]
        text = ""
        for window in (2 * _SAMPLE_CHARS, 12 * _SAMPLE_CHARS):  # 12 bytes: the widest char (\\ud83d\\ude00)
            raw = self.b[start + 1 : min(end - 1, start + 1 + window)]
            cut = raw.rfind(b"\\", max(0, len(raw) - 12))
            if cut != -1 and end - 1 > start + 1 + len(raw):
                raw = raw[:cut]  # never end inside an escape
            decoded = rawjson.decode_string(raw)
            text = decoded if decoded is not None else raw.decode("utf-8", "replace")
            if len(text) >= _SAMPLE_CHARS or start + 1 + window >= end - 1:
                break
        return text[:_SAMPLE_CHARS]

    def has_reminder(self, start: int, end: int) -> bool:
        """Whether a whole ``<system-reminder>`` tag lies in ``s[start:end]`` (tags are few: bisect)."""
        i = bisect.bisect_left(self.reminders, start)
        return i < len(self.reminders) and self.reminders[i] + len(_REMINDER_TAG) <= end

    def tool_result_text(self, tool: ToolRef, start: int, end: int) -> None:
        """A tool result string; Claude Code may append ``<system-reminder>`` s to it."""
        if not self.has_reminder(start, end):
            self.tool_io(tool[0], start, end, RESULT, tool[1], quoted=True)
            return
        text = rawjson.decode_string(self.b[start + 1 : end - 1])
        if text is None:
            self.tool_io(tool[0], start, end, RESULT, tool[1], quoted=True)
            return
        category, item, base = self.tool_item(*tool)
        sections = reminder_sections(text, REMINDERS, "other", self.known, outside=(category, item))
        before = len(self.regions)
        self.text_regions(start, end, sections)
        own = [sec for sec in sections if (sec.category, sec.item) == (category, item)]
        slot = self.details.setdefault((category, item), dict(base))
        slot["results"] = slot.get("results", 0) + 1
        mapped = [r for r in self.regions[before:] if r[2] == category and r[3] == item]
        slot["result_bytes"] = slot.get("result_bytes", 0) + sum(r[1] - r[0] for r in mapped)
        if own:
            self.pending_samples.pop((category, item, "result_sample"), None)
            slot["result_sample"] = text[own[0].start : own[0].end][:_SAMPLE_CHARS]

    def text(self, role: str, start: int, end: int, index: int, tool: ToolRef | None) -> None:
        if tool is not None:
            self.tool_result_text(tool, start, end)
            return
        if role == "assistant":
            self.add(start + 1, end - 1, ASSISTANT, "text")
            return
        text = rawjson.decode_string(self.b[start + 1 : end - 1])
        if text is None:
            self.unknown(start, end)
            return
        if role == "system":
            sections = system_message_sections(text, self.known)
        elif role == "user":
            self.user_state.compaction_instruction = False
            sections = user_text_sections(text, self.user_state, self.known)
            if self.user_state.compaction_instruction:
                self.compaction_message = index
        else:
            self.unknown(start, end)
            return
        if text:
            self.text_regions(start, end, sections)

    def blocks(self, role: str, pos: int, index: int, tool: ToolRef | None) -> int:
        """A content (or tool result) array of blocks; :meth:`arr` with the per-block dispatch inlined."""
        s = self.s
        if s[pos] != "[":
            raise Malformed(pos)
        p = pos + 1
        if s[p] in _BLANK:
            p = skip_ws(s, p)
        if s[p] == "]":
            return p + 1
        return self.block_run(role, p, index, tool)

    def block_run(self, role: str, p: int, index: int, tool: ToolRef | None) -> int:
        """The blocks of a content array from its first one at ``p`` to past its ``]``."""
        s = self.s
        fast = self.fast
        while True:
            end = self.fast_block(role, p, index, tool) if fast else None
            if end is None:
                end = self.slow_block(role, p, index, tool)
            if end > self.good:
                self.good = end
            c = s[end]
            if c == ",":  # compact: the usual case first
                p = end + 1
                if s[p] in _BLANK:
                    p = skip_ws(s, p)
                continue
            if c in _BLANK:
                p = skip_ws(s, end)
                c = s[p]
            else:
                p = end
            if c == ",":
                p += 1
                if s[p] in _BLANK:
                    p = skip_ws(s, p)
            elif c == "]":
                return p + 1
            else:
                raise Malformed(p)

    def fast_block(self, role: str, pos: int, index: int, tool: ToolRef | None) -> int | None:
        """A compact text / tool_use / tool_result block in a few C-level matches; None: not one.

        Returns None only before any side effect, so :meth:`slow_block` can take over.
        """
        s = self.s
        m = _BLOCK_HEAD.match(s, pos)
        if m is None:
            return None
        kind = m.lastindex
        a = m.end()
        # The value's end first, then the block's tail: nothing is recorded unless both read.
        if kind == _HEAD_TEXT:
            a -= 1  # the text's opening quote
        if kind == _HEAD_USE_NAME:
            tool_input, b = value(s, a)
        elif s[a] == '"':
            # string_end(), inlined for the usual string: no backslash before the closing quote.
            q = s.find('"', a + 1)
            b = q + 1 if q > 0 and s[q - 1] != "\\" else string_end(s, a)
        elif s[a] == "[":
            b = skip_value(s, a)
        else:
            return None
        if s.startswith("}", b):  # most blocks: no is_error, no cache_control
            end, is_error, marker = b + 1, None, None
        elif s.startswith(_NO_ERROR_TAIL, b):  # how Claude Code ends many tool results
            end, is_error, marker = b + len(_NO_ERROR_TAIL), "false", None
        else:
            tail = _BLOCK_TAIL.match(s, b)
            if tail is None:
                return None
            end, is_error, marker = tail.end(), tail.group(1), tail.group(2)

        if kind == _HEAD_TEXT:
            if is_error is not None:
                return None
            if role == "assistant" and tool is None:
                if b - a > 2:  # add(), inlined: the most common region of a long conversation
                    self.regions.append((a + 1, b - 1, ASSISTANT, "text"))
                    if _ASSISTANT_TEXT not in self.details:
                        self.details[_ASSISTANT_TEXT] = {}
            else:
                self.text(role, a, b, index, tool)
        elif kind == _HEAD_USE_NAME:
            if is_error is not None:
                return None
            name = m.group(_HEAD_USE_NAME)
            self.tool_uses[m.group(_HEAD_USE_ID)] = (name, tool_input)
            self.tool_io(name, a, b, INPUT, tool_input)
        else:  # a tool_result, whichever of its two usual key orders
            ref = self.tool_uses.get(m.group(kind)) or _UNKNOWN_TOOL
            if s[a] != '"':
                self.blocks(role, a, index, ref)
            elif self.has_reminder(a, b):
                self.tool_result_text(ref, a, b)
            else:  # tool_result_text() for the usual result without reminders
                self.tool_io(ref[0], a, b, RESULT, ref[1], quoted=True)
            if is_error == "true" or (ref[0] == "Skill" and tool is None):
                self.after_result(ref, tool, is_error == "true")
        if marker is not None:
            self.breakpoints.append(Breakpoint(GROUP_MESSAGES, end, "1h" if '"1h"' in marker else "5m"))
        return end

    def after_result(self, ref: ToolRef, tool: ToolRef | None, is_error: bool) -> None:
        if ref[0] == "Skill" and tool is None:
            # The SKILL.md body arrives as the next text block of this message.
            params = ref[1] if isinstance(ref[1], dict) else {}
            skill = params.get("skill") or params.get("command") or params.get("name")
            self.user_state.pending_skill = skill if isinstance(skill, str) else "(unknown)"
        if is_error:
            cat, item, _ = self.tool_item(*ref)
            slot = self.details.setdefault((cat, item), {})
            slot["errors"] = slot.get("errors", 0) + 1

    def slow_block(self, role: str, pos: int, index: int, tool: ToolRef | None) -> int:
        s = self.s
        if s[pos] != "{":
            if s[pos] == '"' and tool is not None:
                end = string_end(s, pos)
                self.text(role, pos, end, index, tool)
                return end
            end = skip_value(s, pos)
            self.unknown(pos, end)
            return end

        walked: list[int] = []

        def direct(seen: dict[str, tuple[int, int, int]], key: str, vstart: int) -> int | None:
            # Walk a tool result's block list in place when its tool is already known.
            if key != "content" or s[vstart] != "[" or "tool_use_id" not in seen:
                return None
            if self.str_value(seen.get("type")) != "tool_result":
                return None
            ref = self.tool_ref(seen["tool_use_id"])
            walked.append(vstart)
            return self.blocks(role, vstart, index, ref)

        block, end = self.fields(pos, direct)
        kind = self.str_value(block.get("type"))
        handled = {"type", "cache_control"}
        if kind == "text" and "text" in block:
            span = block["text"]
            if s[span[1]] == '"':
                self.text(role, span[1], span[2], index, tool)
                handled.add("text")
            handled.add("citations")
        elif kind in ("thinking", "redacted_thinking"):
            for key in ("thinking", "signature", "data"):
                if key in block:
                    self.add(block[key][1], block[key][2], ASSISTANT, "thinking")
                    handled.add(key)
        elif kind in ("tool_use", "server_tool_use", "mcp_tool_use"):
            name = self.str_value(block.get("name")) or "(unknown)"
            tool_id = self.str_value(block.get("id"))
            handled.update(("id", "name", "server_name"))
            if "input" in block:
                _, vstart, vend = block["input"]
                try:
                    tool_input = value(s, vstart)[0]
                except Malformed:
                    tool_input = None
                if tool_id:
                    self.tool_uses[tool_id] = (name, tool_input)
                self.tool_io(name, vstart, vend, INPUT, tool_input)
                handled.add("input")
        elif kind is not None and kind.endswith("tool_result"):
            ref = self.tool_ref(block.get("tool_use_id"))
            name = ref[0]
            handled.update(("tool_use_id", "is_error"))
            if "content" in block:
                _, vstart, vend = block["content"]
                handled.add("content")
                if s[vstart] == "[":
                    if vstart not in walked:  # `direct` could not walk it in place
                        self.blocks(role, vstart, index, ref)
                elif s[vstart] == '"':
                    self.tool_result_text(ref, vstart, vend)
                else:
                    self.tool_io(name, vstart, vend, RESULT, ref[1])
            if kind == "tool_result":
                self.after_result(ref, tool, "is_error" in block and s.startswith("true", block["is_error"][1]))
        elif kind == "tool_reference" and tool is not None:
            for key, (kstart, vstart, vend) in block.items():
                if key not in handled:
                    self.tool_io(tool[0], vstart, vend, RESULT, tool[1])
                    handled.add(key)
        elif kind in ("image", "document"):
            media = "document" if kind == "document" else "image"
            source = block.get("source")
            media_type = None
            if source is not None:
                try:
                    src = value(s, source[1])[0]
                    media_type = src.get("media_type") if isinstance(src, dict) else None
                except Malformed:
                    pass
            item = f"{media}:{media_type}" if isinstance(media_type, str) else media
            for key in ("source", "title", "context", "citations"):
                if key in block:
                    self.add(block[key][1], block[key][2], MEDIA, item, {"kind": media})
                    handled.add(key)
            slot = self.details.setdefault((MEDIA, item), {"kind": media})
            slot["count"] = slot.get("count", 0) + 1
        for key, (kstart, vstart, vend) in block.items():
            if key not in handled:
                self.unknown(kstart, vend)
        self.cache_marker(block, GROUP_MESSAGES, end)
        return end

    def tool_ref(self, span: tuple[int, int, int] | None) -> ToolRef:
        tool_id = self.str_value(span) if span else None
        return self.tool_uses.get(tool_id or "") or _UNKNOWN_TOOL

    # -- results --------------------------------------------------------------------

    def finish_samples(self) -> None:
        for (category, item, key), (start, end) in self.pending_samples.items():
            self.details.setdefault((category, item), {})[key] = self.sample(start, end)

    def layout(self) -> Layout:
        new: tuple[int, int] | None = None
        messages = self.spans.get("messages")
        if messages is not None and self.message_starts:
            last = max((i for i, (_, assistant) in enumerate(self.message_starts) if assistant), default=-1)
            if last + 1 < len(self.message_starts):
                end = messages[1] - 1  # the closing bracket
                while self.b[end - 1 : end] in (b" ", b"\t", b"\n", b"\r"):
                    end -= 1
                new = (self.message_starts[last + 1][0], end)
        return Layout(self.message_count, new, self.metadata)

    def call_kind(self) -> str:
        if self.path and self.path.split("?", 1)[0].rstrip("/").endswith("/count_tokens"):
            return "count_tokens"
        if self.headers.get("x-claude-code-agent-id") or self.billing_subagent:
            return "subagent"
        if self.compaction_message is not None and self.compaction_message == self.message_count - 1:
            return "compaction"
        if self.title:
            return "title"
        return "main" if self.tool_count else "side"


def _cuts(spans: dict[str, tuple[int, int]], breakpoints: list[Breakpoint]) -> list[int]:
    points = {bp.pos for bp in breakpoints}
    for a, b in spans.values():
        points.update((a, b))
    return sorted(points)


def group_of(spans: dict[str, tuple[int, int]], pos: int) -> int:
    for name, group in (("tools", GROUP_TOOLS), ("system", GROUP_SYSTEM), ("messages", GROUP_MESSAGES)):
        span = spans.get(name)
        if span and span[0] <= pos < span[1]:
            return group
    return GROUP_TAIL


def attribute_request(
    body: bytes,
    *,
    headers: Mapping[str, str] | None = None,
    path: str | None = None,
    commands: Collection[str] = (),
) -> Attribution:
    """Regions and byte totals for one request body; tokens stay 0 until :func:`allocate`.

    ``commands`` names custom slash commands known from outside the body (e.g. the
    project's ``.claude/commands``): their lines in the skills listing then count
    as slash commands. Commands invoked in the body itself are recognised anyway.
    """
    walker = _Walker(bytes(body), headers, path, commands)
    error: str | None = None
    try:
        walker.run()
    except Malformed as exc:
        error = f"not JSON from byte {max(walker.good, exc.pos)}"
    except (IndexError, RecursionError) as exc:  # ran off the end / nested too deep
        error = f"{type(exc).__name__} after byte {walker.good}"
    except Exception as exc:  # noqa: BLE001 - a body must never break the caller; say where it stopped
        error = f"internal {type(exc).__name__}: {exc} after byte {walker.good}"
    try:
        walker.finish_samples()
    except Exception as exc:  # noqa: BLE001 - samples are a nicety; never fail the attribution for one
        error = error or f"sample: {type(exc).__name__}"
    kind = walker.call_kind()
    prompt_item = {"subagent": "agent prompt", "title": "title prompt", "side": "side prompt"}.get(kind, "main prompt")
    prompt_category = AGENTS if kind == "subagent" else SYSTEM

    n = walker.n
    limit = walker.good if error is None else max([walker.good] + [r[1] for r in walker.regions])
    limit = min(limit, n)
    raw_regions = walker.regions
    if raw_regions and max(map(operator.itemgetter(1), raw_regions)) > limit:
        raw_regions = [r for r in raw_regions if r[1] <= limit]
    raw_regions.sort()  # the walk appends in byte order almost everywhere: a near-linear sort
    details = walker.details
    if prompt_category != SYSTEM and (SYSTEM, PROMPT) in details:
        details[(prompt_category, prompt_item)] = details.pop((SYSTEM, PROMPT))
    elif (SYSTEM, PROMPT) in details:
        details[(SYSTEM, prompt_item)] = details.pop((SYSTEM, PROMPT))
    cuts = _cuts(walker.spans, walker.breakpoints)
    regions, sizes = partition(raw_regions, limit, cuts, (prompt_category, prompt_item))

    totals = {
        key: ItemTotal(key[0], key[1], size, detail=dict(details.get(key, {}))) for key, size in sizes.items()
    }
    covered = sum(sizes.values())
    unattributed = n - covered
    if unattributed:
        totals[(UNATTRIBUTED, "")] = ItemTotal(UNATTRIBUTED, "", unattributed, detail={"parse_error": error} if error else {})
    for (category, item), detail in details.items():
        if (category, item) not in totals and detail:
            totals[(category, item)] = ItemTotal(category, item, 0, detail=dict(detail))
    categories = {name: ItemTotal(name, "") for name in CATEGORIES}
    for total in totals.values():
        cat = categories.setdefault(total.category, ItemTotal(total.category, ""))
        cat.bytes += total.bytes
        cat.detail["items"] = cat.detail.get("items", 0) + 1
    return Attribution(
        regions=regions,
        body_bytes=n,
        unattributed_bytes=unattributed,
        call_kind=kind,
        agent_id=walker.headers.get("x-claude-code-agent-id") or None,
        items=list(totals.values()),
        categories=categories,
        breakpoints=sorted(walker.breakpoints, key=lambda bp: bp.pos),
        spans=dict(walker.spans),
        parse_error=error,
        # Only for a body that is one JSON value end to end, as json.loads would take it.
        layout=walker.layout() if error is None and walker.good >= n else None,
    )


def classify_call(body: bytes, headers: Mapping[str, str] | None = None, path: str | None = None) -> str:
    """main | subagent | compaction | title | side | count_tokens (see :func:`attribute_request`)."""
    return attribute_request(body, headers=headers, path=path).call_kind
