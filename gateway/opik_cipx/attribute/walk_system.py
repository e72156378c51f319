"""The ``system`` blocks and the ``tools`` definitions of a request."""

from __future__ import annotations

from . import rawjson
from .partition import PROMPT
from .rawjson import skip_value, value
from .sections import BILLING_PREFIX, TITLE_PROMPT
from .types import BUILTIN_TOOLS, GROUP_SYSTEM, GROUP_TOOLS, MCP, SYSTEM, Breakpoint
from .walk_base import SAMPLE_CHARS, WalkBase


class SystemWalk(WalkBase):
    """The top-level ``system`` blocks and ``tools`` definitions."""

    # -- system ---------------------------------------------------------------------

    def system_block(self, index: int, pos: int) -> int:
        if self.s[pos] != "{":
            end = skip_value(self.s, pos)
            self.unknown(pos, end)
            return end
        block, end = self.fields(pos)
        text = block.get("text")
        for key, (kstart, _, vend) in block.items():
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
            self.add(start + 1, end - 1, SYSTEM, "billing", {"text": line[:SAMPLE_CHARS]})
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
