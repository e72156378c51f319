"""Messages and their content blocks: text, tool calls and results, thinking, media.

Compact Claude Code JSON takes the fast paths: one C-level match per message or
block instead of a member-by-member walk (``fast_block``); anything else, and
any block the fast path is unsure of, takes the general walk (``slow_block``).
"""

from __future__ import annotations

import re

from . import rawjson
from .rawjson import Malformed, skip_value, skip_ws, string_end, value
from .sections import system_message_sections, user_text_sections
from .types import ASSISTANT, GROUP_MESSAGES, MEDIA, Breakpoint
from .walk_base import BLANK, OBJ_SEP, UNKNOWN_TOOL, Members, Span, ToolRef
from .walk_toolio import INPUT, RESULT, ToolIoWalk

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
_ASSISTANT_TEXT = (ASSISTANT, "text")


class MessageWalk(ToolIoWalk):
    """The ``messages`` array down to the blocks of tool results."""

    # -- messages -------------------------------------------------------------------

    # Where the walk notes its state for the next call of the session (see attribute/resume.py):
    # at the start of every message from this index on; None: nowhere.
    snap_from: int | None = None
    snapped: dict[str, object] | None = None

    def note_state(self, array_start: int, pos: int, index: int) -> dict[str, object]:
        raise NotImplementedError  # the concrete walker (walk._Walker) knows all of its state

    def messages(self, pos: int, resume: tuple[int, int] | None = None) -> int:
        """The messages array: :meth:`arr` over :meth:`message`, with the usual compact message
        (``{"role":…,"content":[`` blocks ``]}``) walked right here, without the calls per message.

        ``resume``: (offset, index) of the message to go on from, the state before it restored.
        """
        s = self.s
        head = _MESSAGE_BLOCKS.match
        if resume is not None:
            p, index = resume
        else:
            self.message_starts = []  # a repeated "messages" key: the last one counts, as in json.loads
            if not self.fast:
                return self.arr(pos, self.message)
            if s[pos] != "[":
                raise Malformed(pos)
            p = pos + 1
            if s[p] in BLANK:
                p = skip_ws(s, p)
            if s[p] == "]":
                return p + 1
            index = 0
        snap_from = self.snap_from
        while True:
            if snap_from is not None and index >= snap_from:
                self.snapped = self.note_state(pos, p, index)
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
                if s[p] in BLANK:
                    p = skip_ws(s, p)
                index += 1
                continue
            if c in BLANK:
                p = skip_ws(s, end)
                c = s[p]
            else:
                p = end
            if c == ",":
                p += 1
                if s[p] in BLANK:
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
        sep = OBJ_SEP.match(self.s, end)
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
        if s[p] in BLANK:
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
                if s[p] in BLANK:
                    p = skip_ws(s, p)
                continue
            if c in BLANK:
                p = skip_ws(s, end)
                c = s[p]
            else:
                p = end
            if c == ",":
                p += 1
                if s[p] in BLANK:
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
        if kind is None:  # never: each alternative of the head captures a group
            return None
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

        since = len(self.regions)
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
            self.own_block(pos, end, since, (name, tool_input))
        else:  # a tool_result, whichever of its two usual key orders
            ref = self.tool_uses.get(m.group(kind)) or UNKNOWN_TOOL
            if s[a] != '"':
                self.blocks(role, a, index, ref)
            elif self.has_reminder(a, b):
                self.tool_result_text(ref, a, b)
            else:  # tool_result_text() for the usual result without reminders
                self.tool_io(ref[0], a, b, RESULT, ref[1], quoted=True)
            if is_error == "true" or (ref[0] == "Skill" and tool is None):
                self.after_result(ref, tool, is_error == "true")
            self.own_block(pos, end, since, ref)
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
        since = len(self.regions)
        owner: ToolRef | None = None  # a tool_use / tool_result block: its gaps are the tool's

        def direct(seen: Members, key: str, vstart: int) -> int | None:
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
                owner = (name, tool_input)
            else:
                owner = (name, None)
        elif kind is not None and kind.endswith("tool_result"):
            ref = self.tool_ref(block.get("tool_use_id"))
            name = ref[0]
            owner = ref
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
            for key, (_, vstart, vend) in block.items():
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
        for key, (kstart, _, vend) in block.items():
            if key not in handled:
                self.unknown(kstart, vend)
        if owner is not None:
            self.own_block(pos, end, since, owner)
        self.cache_marker(block, GROUP_MESSAGES, end)
        return end

    def tool_ref(self, span: Span | None) -> ToolRef:
        tool_id = self.str_value(span) if span else None
        return self.tool_uses.get(tool_id or "") or UNKNOWN_TOOL
