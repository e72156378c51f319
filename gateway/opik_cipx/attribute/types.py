"""The attribution result: byte regions of the raw body and totals per bucket."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

SYSTEM = "system"
BUILTIN_TOOLS = "builtin_tools"
MCP = "mcp"
SKILLS = "skills"
MEMORY = "memory"
AGENTS = "agents"
SLASH_COMMANDS = "slash_commands"
USER_PROMPT = "user_prompt"
ASSISTANT = "assistant"
TOOL_IO = "tool_io"
HOOKS = "hooks"
COMPACTION = "compaction"
REMINDERS = "reminders"
MEDIA = "media"
FRAMING = "framing"
UNATTRIBUTED = "unattributed"
OUTPUT = "output"

CATEGORIES: tuple[str, ...] = (
    SYSTEM,
    BUILTIN_TOOLS,
    MCP,
    SKILLS,
    MEMORY,
    AGENTS,
    SLASH_COMMANDS,
    USER_PROMPT,
    ASSISTANT,
    TOOL_IO,
    HOOKS,
    COMPACTION,
    REMINDERS,
    MEDIA,
    FRAMING,
    UNATTRIBUTED,
)

# Where a byte sits in the API's cache order: tools, then system, then messages.
# Everything else (model, metadata, top-level punctuation) is never cached.
GROUP_TOOLS = 0
GROUP_SYSTEM = 1
GROUP_MESSAGES = 2
GROUP_TAIL = 3
GROUP_NAMES = ("tools", "system", "messages", "tail")


class Region(NamedTuple):
    """Bytes ``[start, end)`` of the raw request body belong to ``category``/``item``.

    A NamedTuple rather than a frozen dataclass: a 1 MB body has thousands of
    regions and a frozen dataclass costs several times more to build.
    """

    start: int
    end: int
    category: str
    item: str

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Breakpoint:
    """A ``cache_control`` marker: the cached prefix may end right after ``pos``."""

    group: int  # GROUP_TOOLS / GROUP_SYSTEM / GROUP_MESSAGES
    pos: int  # byte offset just past the marked block
    ttl: str  # "5m" or "1h"


@dataclass(slots=True)
class ItemTotal:
    category: str
    item: str
    bytes: int = 0
    tokens: int = 0
    cost_usd: float | None = None
    # memory: path, sha256_12; user_prompt: text, chars; tool_io: sizes, sample;
    # mcp: server, tool; slash_commands: command, args; after allocate: token split.
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the parts the span projection reads sit in the body, found by the same walk.

    Only the new turn (the messages after the last assistant message) and ``metadata``
    are ever parsed again, so a call's body is walked once, not walked and then parsed whole.
    """

    message_count: int
    # The elements of the messages array after the last assistant message ("m1,m2"), or None.
    new_messages: tuple[int, int] | None
    metadata: tuple[int, int] | None  # the top-level "metadata" value


@dataclass(slots=True)
class Attribution:
    regions: list[Region]  # sorted, non-overlapping; gaps between them are unattributed
    body_bytes: int
    unattributed_bytes: int
    call_kind: str  # main | subagent | compaction | title | side | count_tokens
    agent_id: str | None
    items: list[ItemTotal]  # per (category, item), in first-seen order
    categories: dict[str, ItemTotal]  # per category (item == "")
    output_items: list[ItemTotal] = field(default_factory=list)  # text / thinking / tool_use:<name>
    cache_split: dict[str, Any] = field(default_factory=dict)
    breakpoints: list[Breakpoint] = field(default_factory=list)  # in byte order
    # Byte spans of the "tools", "system" and "messages" values, for cache ordering.
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)
    parse_error: str | None = None  # where and why the body stopped being readable
    layout: Layout | None = None  # None when the body is not well-formed JSON all through
    # Bytes per item between breakpoints (profile.py), what allocate() reads instead of every
    # region; left out of comparisons: it is a digest of the regions, not another result.
    bins: Any = field(default=None, compare=False, repr=False)
    speed: str | None = None  # the request's top-level "speed" setting (e.g. "fast"), if it has one

    def segments(self) -> Iterator[Region]:
        """Every byte exactly once: the regions plus unattributed gaps, in byte order."""
        cursor = 0
        for region in self.regions:
            if region.start > cursor:
                yield Region(cursor, region.start, UNATTRIBUTED, "")
            yield region
            cursor = region.end
        if cursor < self.body_bytes:
            yield Region(cursor, self.body_bytes, UNATTRIBUTED, "")

    def item(self, category: str, item: str) -> ItemTotal | None:
        for total in self.items:
            if total.category == category and total.item == item:
                return total
        return None
