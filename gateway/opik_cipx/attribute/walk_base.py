"""The walker's state and the JSON primitives every part of the walk uses.

:class:`WalkBase` holds what the walk collects (regions, details, breakpoints,
spans, the call's facts) and walks objects, arrays and members over the latin-1
view of the body. The parts built on it (system and tools, messages and blocks,
tool inputs and results) live in their own modules; :mod:`.walk` puts them
together.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from . import rawjson
from .partition import Key, RawRegion
from .rawjson import Malformed, skip_value, skip_ws, value
from .sections import Known, Section, UserState
from .types import Breakpoint

# One sre scan for the literal finds the candidates; the name is read with
# _MCP_NAME and the `"name":` before it checked in Python on the few hits.
_MCP_PREFIX = re.compile("mcp__")
_MCP_NAME = re.compile(r'mcp__[^"\\]+(?=")')
_NAME_KEY = re.compile(r'"name"[ \t\n\r]*:[ \t\n\r]*"$')
# One match per object member: optional blanks, the key, the colon, blanks up to the value.
_MEMBER = re.compile(r'[ \t\n\r]*"([^"\\]*(?:\\.[^"\\]*)*)"[ \t\n\r]*:[ \t\n\r]*', re.S)
OBJ_SEP = re.compile(r"[ \t\n\r]*([,}])")
_OBJ_CLOSE = re.compile(r"[ \t\n\r]*}")
BLANK = " \t\n\r"
REMINDER_TAG = "<system-reminder>"
SAMPLE_CHARS = 200
ToolRef = tuple[str, Any]  # (tool name, its tool_use input)
UNKNOWN_TOOL: ToolRef = ("(unknown)", None)
Span = tuple[int, int, int]  # one member: (key start, value start, value end)
Members = dict[str, Span]
# A member hook for fields(): the value's end when it walked the value itself, else None.
Direct = Callable[[Members, str, int], int | None]


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


class WalkBase:
    """What the walk collects, and the object/array/member walk over the body's latin-1 view."""

    # The compact-JSON fast paths; tests turn them off (``walk._Walker.fast``) to check
    # they agree with the general walk.
    fast: ClassVar[bool] = True
    # Set by the concrete walker from its one scan of the body's tags.
    reminders: list[int]  # offsets of every <system-reminder>, sorted
    known: Known

    def __init__(
        self, body: bytes, headers: Mapping[str, str] | None, path: str | None, mcp_names: set[str] | None = None
    ) -> None:
        self.b = body
        self.s = body.decode("latin-1")
        self.n = len(body)
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}
        self.path = path
        self.regions: list[RawRegion] = []
        self.details: dict[Key, dict[str, Any]] = {}
        self.breakpoints: list[Breakpoint] = []
        self.spans: dict[str, tuple[int, int]] = {}
        self.good = 0
        self.mcp_names = self._mcp_names() if mcp_names is None else mcp_names
        self.tool_uses: dict[str, ToolRef] = {}  # tool_use id -> (name, input)
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
        self.speed: str | None = None  # a top-level "speed" string
        # While a memoised member is walked (resume.record_section): every add() call, in order.
        self.tape: list[Any] | None = None

    def _mcp_names(self, start: int = 0, end: int | None = None) -> set[str]:
        """Every ``"name": "mcp__…"`` value in the body (tool definitions and calls), or in
        ``s[start:end]`` (a resumed walk scans only what follows the reused prefix)."""
        s, out = self.s, set[str]()
        name, key = _MCP_NAME.match, _NAME_KEY.search
        # sre's literal-prefix search: a little faster than a str.find loop
        for hit in _MCP_PREFIX.finditer(s, start, len(s) if end is None else end):
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
        if self.tape is not None:
            self.tape.append((start, end, category, item, detail))
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
        match_sep = OBJ_SEP.match
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
        if s[p] in BLANK:
            p = skip_ws(s, p)
        if s[p] == "]":
            return p + 1
        i = 0
        while True:
            end = element(i, p)
            if end > self.good:
                self.good = end
            c = s[end]
            if c in BLANK:
                p = skip_ws(s, end)
                c = s[p]
            else:
                p = end
            if c == ",":
                p += 1
                if s[p] in BLANK:
                    p = skip_ws(s, p)
                i += 1
            elif c == "]":
                return p + 1
            else:
                raise Malformed(p)

    def fields(self, pos: int, direct: Direct | None = None) -> tuple[Members, int]:
        """Members of a block as {key: (key_start, value_start, value_end)} (values skipped)."""
        out: Members = {}

        def member(key: str, kstart: int, vstart: int) -> int:
            end = direct(out, key, vstart) if direct else None
            if end is None:
                end = skip_value(self.s, vstart)
            out[key] = (kstart, vstart, end)
            return end

        return out, self.obj(pos, member)

    def str_value(self, span: Span | None) -> str | None:
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

    def cache_marker(self, block: Members, group: int, block_end: int) -> None:
        span = block.get("cache_control")
        if span is None:
            return
        try:
            marker = value(self.s, span[1])[0]
        except Malformed:
            return
        ttl = marker.get("ttl") if isinstance(marker, dict) else None
        self.breakpoints.append(Breakpoint(group, block_end, ttl if ttl in ("5m", "1h") else "5m"))
