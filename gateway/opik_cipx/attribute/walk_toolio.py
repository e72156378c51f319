"""Tool inputs and results: which item they cost, their counts, bytes and samples.

A tool's calls and results share one item so it shows what the tool costs end to
end; Agent/Task briefs and answers go to the custom agent instead. A result may
carry ``<system-reminder>`` s, which are split out to ``reminders``.
"""

from __future__ import annotations

import bisect
from typing import Any

from . import rawjson
from .sections import reminder_sections
from .types import AGENTS, MCP, REMINDERS, TOOL_IO
from .walk_base import REMINDER_TAG, SAMPLE_CHARS, ToolRef, WalkBase

_AGENT_TOOLS = frozenset({"Agent", "Task"})
# tool_io's detail keys (count, bytes, sample) for a tool input and a tool result.
IoKeys = tuple[str, str, str]
INPUT: IoKeys = ("inputs", "input_bytes", "input_sample")
RESULT: IoKeys = ("results", "result_bytes", "result_sample")


class ToolIoWalk(WalkBase):
    """Tool inputs and results: the item each one costs, its counts, bytes and latest sample."""

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

    def own_block(self, start: int, end: int, since: int, tool: ToolRef) -> None:
        """Give the gaps of a tool_use / tool_result block ``[start, end)`` to the tool's item.

        The block's braces, ``type``, ``id`` / ``tool_use_id`` and ``name`` keys are
        what calling the tool costs as much as its input and result are; left as
        gaps they would be framing and per-tool totals would come out short.
        ``since``: the index in ``regions`` where the block's own regions begin.
        """
        category, item, base = self.tool_items.get(tool[0]) or self.tool_item(*tool)
        inner = sorted(self.regions[since:]) if since < len(self.regions) else []
        cursor = start
        regions = self.regions
        for a, b, _, _ in inner:
            if a > cursor:
                regions.append((cursor, a, category, item))
            if b > cursor:
                cursor = b
        if end > cursor:
            regions.append((cursor, end, category, item))
        self.details.setdefault((category, item), dict(base))

    def sample(self, start: int, end: int) -> str:
        """Up to 200 chars of a value's text, decoding only its head."""
        if self.s[start] != '"':
            return self.b[start : min(end, start + 12 * SAMPLE_CHARS)].decode("utf-8", "replace")[:SAMPLE_CHARS]
        text = ""
        for window in (2 * SAMPLE_CHARS, 12 * SAMPLE_CHARS):  # 12 bytes: the widest char (\\ud83d\\ude00)
            raw = self.b[start + 1 : min(end - 1, start + 1 + window)]
            cut = raw.rfind(b"\\", max(0, len(raw) - 12))
            if cut != -1 and end - 1 > start + 1 + len(raw):
                raw = raw[:cut]  # never end inside an escape
            decoded = rawjson.decode_string(raw)
            text = decoded if decoded is not None else raw.decode("utf-8", "replace")
            if len(text) >= SAMPLE_CHARS or start + 1 + window >= end - 1:
                break
        return text[:SAMPLE_CHARS]

    def has_reminder(self, start: int, end: int) -> bool:
        """Whether a whole ``<system-reminder>`` tag lies in ``s[start:end]`` (tags are few: bisect)."""
        i = bisect.bisect_left(self.reminders, start)
        return i < len(self.reminders) and self.reminders[i] + len(REMINDER_TAG) <= end

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
            slot["result_sample"] = text[own[0].start : own[0].end][:SAMPLE_CHARS]

    def finish_samples(self) -> None:
        for (category, item, key), (start, end) in self.pending_samples.items():
            self.details.setdefault((category, item), {})[key] = self.sample(start, end)
