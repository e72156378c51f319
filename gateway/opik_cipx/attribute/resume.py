"""The walk of a call resumed from the previous call of its session: work in proportion to new bytes.

Claude Code resends the whole conversation every turn: call N+1's body is call N's
up to the start of N's last message (whose ``cache_control`` marker moves on), then
the new messages. The walker's state at a message's start is a function of the bytes
before it and of a few facts about the whole body (the MCP names and the
``<command-name>`` tags it holds, the headers, the caller's command names), so a
:class:`Snapshot` of that state, taken while walking call N, lets call N+1 skip the
shared prefix whenever the prefix is byte-identical and those facts are equal. Any
other change (a compaction, an edited system prompt in the SDK's key order, a marker
moved into the prefix, a new MCP server) fails one of the checks and the walk starts
from the first byte, as it always did.

Claude Code sends ``system`` and ``tools`` after the messages, so they are never in the
reused prefix; but they rarely change between calls. A :class:`SectionMemo` records what
walking one of them did (the regions and details added, the breakpoints, a few flags), and
a resumed walk that finds the same bytes again replays it, shifted to where they now sit.
The walk of such a member depends only on its bytes and on the facts the snapshot checks
(MCP names, known servers and commands), so the replay adds exactly what walking it would.

Memory is bounded: one snapshot per session and agent (the last call's), at most
``max_entries`` of them, and none idle longer than ``idle_seconds``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .types import Breakpoint

if TYPE_CHECKING:
    from .walk_base import WalkBase

# Top-level members whose walk is memoised: large, after the messages, unchanged for long.
MEMO_KEYS = frozenset({"system", "tools"})
Added = tuple[int, int, str | None, str, dict[str, Any] | None]  # one WalkBase.add() call


@dataclass(slots=True)
class SectionMemo:
    """What walking one top-level member's value did, replayable where the same bytes recur."""

    raw: bytes  # the value's bytes
    start: int  # where the value started in the body it was walked in
    added: list[Added]
    breakpoints: list[Breakpoint]
    tool_count: int
    billing_subagent: bool | None  # what the member set it to, if it set it
    title: bool


def record_section(walker: WalkBase, vstart: int, walk: Callable[[], int]) -> tuple[int, SectionMemo]:
    """Walk a member's value with ``walk()``, noting its effects on ``walker``; its end and the memo."""
    tape: list[Added] = []
    bp0, tools0, billing0, title0 = len(walker.breakpoints), walker.tool_count, walker.billing_subagent, walker.title
    walker.tape = tape
    try:
        end = walk()
    finally:
        walker.tape = None
    # Only the system prompt's billing line sets the flag, once per body: a change is what it said.
    billing = walker.billing_subagent if walker.billing_subagent != billing0 else None
    memo = SectionMemo(
        raw=walker.b[vstart:end], start=vstart, added=tape, breakpoints=walker.breakpoints[bp0:],
        tool_count=walker.tool_count - tools0, billing_subagent=billing, title=walker.title and not title0,
    )
    return end, memo


def replay_section(walker: WalkBase, memo: SectionMemo, vstart: int) -> int:
    """Apply ``memo`` to ``walker`` for the same bytes found at ``vstart``; the value's end."""
    shift = vstart - memo.start
    add = walker.add
    for start, end, category, item, detail in memo.added:
        add(start + shift, end + shift, category, item, detail)
    walker.breakpoints.extend(Breakpoint(bp.group, bp.pos + shift, bp.ttl) for bp in memo.breakpoints)
    walker.tool_count += memo.tool_count
    if memo.billing_subagent is not None:
        walker.billing_subagent = memo.billing_subagent
    if memo.title:
        walker.title = True
    end = vstart + len(memo.raw)
    if end > walker.good:
        walker.good = end
    return end


@dataclass(slots=True)
class Snapshot:
    """The walker's state at the start of message ``index`` (byte ``pos``) of an earlier body."""

    prefix: bytes  # the body up to ``pos``: a later body must start with exactly these bytes
    pos: int
    index: int
    array_start: int  # where the messages array's ``[`` is
    facts: tuple[Any, ...]  # headers, path, commands, fast-path switch: must be equal to reuse
    mcp_names: frozenset[str]  # of the whole earlier body: the prefix was walked knowing these
    known: Any  # sections.Known of the whole earlier body, likewise
    names_in_prefix: frozenset[str]  # MCP names found before ``pos``
    commands_in_prefix: frozenset[str]  # <command-name>s found before ``pos``
    reminders: list[int]  # <system-reminder> offsets before ``pos``
    state: dict[str, Any]  # everything else the walk had collected (copies)
    message_count: int = 0  # the earlier body's, as a hint where to snapshot next
    # What came of the prefix after the walk: the final regions (partition.py) up to the
    # partition's state then, and the bytes per item between breakpoints (profile.py) up to
    # ``seg_cursor``, with the system prompt's name the regions were given.
    out: list[Any] = field(default_factory=list)
    part: Any = None  # partition.PartitionState
    bins: Any = None  # profile.Bins
    seg_cursor: int = 0
    prompt: tuple[str, str] = ("", "")
    sections: dict[str, SectionMemo] = field(default_factory=dict)  # system / tools, walked after ``pos``
    used: float = field(default=0.0)


@dataclass(slots=True)
class Hint:
    """No snapshot yet: how many messages the session's last call had (snapshot from there)."""

    message_count: int
    used: float = 0.0


class WalkCache:
    """The last call's snapshot per (session, agent), for the next call's walk."""

    def __init__(
        self, max_entries: int = 8, idle_seconds: float = 600.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_entries = max_entries
        self.idle_seconds = idle_seconds
        self.clock = clock
        self.entries: dict[Hashable, Snapshot | Hint] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> Snapshot | Hint | None:
        self.evict()
        entry = self.entries.get(key)
        if entry is not None:
            entry.used = self.clock()
        return entry

    def put(self, key: Hashable, entry: Snapshot | Hint) -> None:
        entry.used = self.clock()
        self.entries.pop(key, None)
        self.entries[key] = entry
        while len(self.entries) > self.max_entries:
            self.entries.pop(min(self.entries, key=lambda k: self.entries[k].used))

    def evict(self) -> None:
        """Drop what no call has used for ``idle_seconds``: an ended session's body is garbage."""
        horizon = self.clock() - self.idle_seconds
        for key in [k for k, e in self.entries.items() if e.used < horizon]:
            del self.entries[key]

    def clear(self) -> None:
        self.entries.clear()

    def held_bytes(self) -> int:
        """Roughly what the snapshots keep alive: their prefixes and memoised sections."""
        return sum(
            len(e.prefix) + sum(len(m.raw) for m in e.sections.values())
            for e in self.entries.values()
            if isinstance(e, Snapshot)
        )
