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
import dataclasses
import operator
import re
from collections.abc import Collection, Hashable, Iterator, Mapping

from . import profile
from .partition import PROMPT, partition_from
from .rawjson import Malformed, skip_value, skip_ws
from .resume import MEMO_KEYS, Hint, SectionMemo, Snapshot, WalkCache, record_section, replay_section
from .sections import Known
from .types import (
    AGENTS,
    CATEGORIES,
    FRAMING,
    GROUP_MESSAGES,
    GROUP_SYSTEM,
    GROUP_TAIL,
    GROUP_TOOLS,
    SYSTEM,
    UNATTRIBUTED,
    Attribution,
    Breakpoint,
    ItemTotal,
    Layout,
    Region,
)
from .walk_base import OBJ_SEP, REMINDER_TAG, ToolRef, split_mcp_name
from .walk_messages import MessageWalk
from .walk_system import SystemWalk
from .walk_toolio import INPUT, RESULT, IoKeys

__all__ = [
    "FRAMING_KEYS",
    "INPUT",
    "RESULT",
    "IoKeys",
    "ToolRef",
    "attribute_request",
    "classify_call",
    "group_of",
    "split_mcp_name",
]

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
# The tags _scan_tags looks for: reminders (offsets) and invoked slash commands (names).
_INVOKED_COMMAND = re.compile(r"<command-name>/?([^<\s]+)</command-name>")
_TAG_NAMES = (REMINDER_TAG, "<command-name>")
_TAGS = re.compile(r"<(?:system-reminder|command-name)>")
_TAG_HOPS = 256  # '<' visited one by one before the tag scan hands over to sre
_SHAPE_BYTES = 512  # a body's head tells its conversation from the session's side calls


def _scan_tags(s: str, start: int = 0, stop: int | None = None) -> tuple[list[int], frozenset[str]]:
    """Offsets of every ``<system-reminder>`` tag, and the names in every ``<command-name>`` tag.

    One pass over the body for both, instead of a search per tool result plus
    ``in`` and ``findall`` over the body for commands. A command match never
    contains another tag, so these are exactly the names ``findall`` finds.

    ``str.find`` (memchr) hops from ``<`` to ``<`` while they are few, as in
    prose and logs; past ``_TAG_HOPS`` of them (code, markup) the rest is one
    sre scan, whose ``<`` prefix search is slower than memchr but has no
    Python step per ``<``. Either way, the same tags. ``start``/``stop``: only tags that
    begin in ``s[start:stop]`` (tags sit inside strings, never across a message's start).
    """
    stop = len(s) if stop is None else stop
    reminders: list[int] = []
    commands: set[str] = set()
    command = _INVOKED_COMMAND.match
    find, at = s.find, s.startswith
    i = find("<", start, stop)
    for _ in range(_TAG_HOPS):
        if i == -1:
            break
        if not at(_TAG_NAMES, i):
            i = find("<", i + 1, stop)
        elif s[i + 1] == "s":
            reminders.append(i)
            i = find("<", i + len(REMINDER_TAG), stop)
        else:
            if (c := command(s, i)) is not None:
                commands.add(c.group(1))
            i = find("<", i + len("<command-name>"), stop)
    else:
        for m in _TAGS.finditer(s, i, stop) if i != -1 else ():
            if m.end() - m.start() == len(REMINDER_TAG):
                reminders.append(m.start())
            elif (c := command(s, m.start())) is not None:
                commands.add(c.group(1))
    return reminders, frozenset(commands)


class _Walker(MessageWalk, SystemWalk):
    """The whole walk: the top-level members here, the parts from the mixins it is made of."""

    def __init__(
        self,
        body: bytes,
        headers: Mapping[str, str] | None,
        path: str | None,
        commands: Collection[str],
        snap: Snapshot | None = None,
    ) -> None:
        if snap is None:
            super().__init__(body, headers, path)
            self.reminders, invoked = _scan_tags(self.s)
        else:  # the prefix's scans are the snapshot's: scan only what follows it
            super().__init__(body, headers, path, mcp_names=set())
            self.mcp_names = set(snap.names_in_prefix) | self._mcp_names(snap.pos)
            reminders, invoked = _scan_tags(self.s, snap.pos)
            self.reminders = snap.reminders + reminders
            invoked = snap.commands_in_prefix | invoked
        self.known = Known(
            servers=frozenset(sp[0] for sp in map(self._split, self.mcp_names) if sp),
            commands=frozenset(c.lstrip("/") for c in commands) | invoked,
        )
        # Memos of system/tools: replayed from ``prior`` (a resumed walk), recorded into ``memos``.
        self.prior: dict[str, SectionMemo] = snap.sections if snap is not None else {}
        # Each with where its bytes start in this body (a replayed memo's own start is older).
        self.memos: dict[str, tuple[SectionMemo, int]] | None = None  # None: not recording (no cache)

    # -- resuming (see resume.py) ---------------------------------------------------

    def note_state(self, array_start: int, pos: int, index: int) -> dict[str, object]:
        """Copies of what the walk has collected before message ``index`` at ``pos``."""
        return {
            "array_start": array_start, "pos": pos, "index": index, "regions": len(self.regions),
            "details": {k: dict(v) for k, v in self.details.items()},
            "breakpoints": list(self.breakpoints), "spans": dict(self.spans), "good": self.good,
            "tool_uses": dict(self.tool_uses), "tool_items": dict(self.tool_items),
            "pending_samples": dict(self.pending_samples), "user_state": dataclasses.replace(self.user_state),
            "billing_subagent": self.billing_subagent, "title": self.title, "tool_count": self.tool_count,
            "message_count": self.message_count, "compaction_message": self.compaction_message,
            "message_starts": list(self.message_starts), "metadata": self.metadata, "speed": self.speed,
        }

    def restore(self, snap: Snapshot) -> None:
        """The state a full walk would have at the snapshot's message (copies: the snapshot stays reusable)."""
        st = snap.state
        self.regions = []  # the prefix's regions are final already (snap.out): only new ones from here
        self.details = {k: dict(v) for k, v in st["details"].items()}
        self.breakpoints = list(st["breakpoints"])
        self.spans = dict(st["spans"])
        self.good = st["good"]
        self.tool_uses = dict(st["tool_uses"])
        self.tool_items = dict(st["tool_items"])
        self.pending_samples = dict(st["pending_samples"])
        self.user_state = dataclasses.replace(st["user_state"])
        self.billing_subagent = st["billing_subagent"]
        self.title = st["title"]
        self.tool_count = st["tool_count"]
        self.message_count = st["message_count"]
        self.compaction_message = st["compaction_message"]
        self.message_starts = list(st["message_starts"])
        self.metadata = st["metadata"]
        self.speed = st["speed"]

    def run_resumed(self, snap: Snapshot) -> None:
        """The rest of the walk from the snapshot's message: that array, then the top-level members after it."""
        s = self.s
        end = self.messages(snap.array_start, resume=(snap.pos, snap.index))
        self.spans["messages"] = (snap.array_start, end)
        if end > self.good:
            self.good = end
        sep = OBJ_SEP.match(s, end)
        if sep is None:
            raise Malformed(end)
        top_end = sep.end() if sep.group(1) == "}" else self.obj(skip_ws(s, 0), self.top_member, resume=sep.end())
        self.good = skip_ws(s, top_end)

    def snapshot(self, snap: Snapshot | None, facts: tuple[object, ...]) -> Snapshot | None:
        """A :class:`Snapshot` of the last state noted, for the next call; None if none was noted."""
        st = self.snapped
        if st is None:
            return None
        pos = int(st["pos"])  # type: ignore[call-overload]
        if snap is None:
            names = frozenset(self._mcp_names(0, pos))
            commands = _scan_tags(self.s, 0, pos)[1]
        else:
            names = snap.names_in_prefix | self._mcp_names(snap.pos, pos)
            commands = snap.commands_in_prefix | _scan_tags(self.s, snap.pos, pos)[1]
        return Snapshot(
            prefix=self.b[:pos], pos=pos, index=int(st["index"]),  # type: ignore[call-overload]
            array_start=int(st["array_start"]), facts=facts,  # type: ignore[call-overload]
            mcp_names=frozenset(self.mcp_names), known=self.known, names_in_prefix=names,
            commands_in_prefix=commands, reminders=self.reminders[: bisect.bisect_left(self.reminders, pos)],
            state=st, message_count=self.message_count,
            # Only members walked after ``pos``: those before it are in the prefix anyway.
            sections={k: m for k, (m, at) in (self.memos or {}).items() if at >= pos},
        )

    # -- top level ------------------------------------------------------------------

    def run(self) -> None:
        s = self.s
        p = skip_ws(s, 0)
        if p >= self.n:
            raise Malformed(p)
        end = self.obj(p, self.top_member)
        self.good = skip_ws(s, end)

    def top_member(self, key: str, kstart: int, vstart: int) -> int:
        if key in MEMO_KEYS and self.memos is not None:
            memo = self.prior.get(key)
            if memo is not None and self.b.startswith(memo.raw, vstart):
                end = replay_section(self, memo, vstart)
                self.spans[key] = (vstart, end)
            else:
                end, memo = record_section(self, vstart, lambda: self.member_value(key, kstart, vstart))
            self.memos[key] = (memo, vstart)
            return end
        return self.member_value(key, kstart, vstart)

    def member_value(self, key: str, kstart: int, vstart: int) -> int:
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
        elif key == "speed":
            self.speed = self.str_value((kstart, vstart, end))
        if key in FRAMING_KEYS:
            self.add(kstart, end, FRAMING, key)
        else:
            self.unknown(kstart, end)
        return end

    # -- results --------------------------------------------------------------------

    def layout(self) -> Layout:
        new: tuple[int, int] | None = None
        messages = self.spans.get("messages")
        if messages is not None and self.message_starts:
            starts = self.message_starts
            last = len(starts) - 1  # the last assistant message, looked for from the end
            while last >= 0 and not starts[last][1]:
                last -= 1
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
    cache: WalkCache | None = None,
    cache_key: Hashable | None = None,
) -> Attribution:
    """Regions and byte totals for one request body; tokens stay 0 until :func:`allocate`.

    ``commands`` names custom slash commands known from outside the body (e.g. the
    project's ``.claude/commands``): their lines in the skills listing then count
    as slash commands. Commands invoked in the body itself are recognised anyway.

    ``cache`` and ``cache_key`` (the session and agent): the walk goes on from the previous
    call's state where this body starts with that call's bytes (see resume.py), with the
    same result a walk from the first byte gives.
    """
    body = bytes(body)
    walker: _Walker | None = None
    snap: Snapshot | None = None
    entry: Snapshot | Hint | None = None
    facts: tuple[object, ...] = ()
    if cache is not None and cache_key is not None:
        # One snapshot per conversation: side calls of the session (titles, summaries) start differently.
        cache_key = (cache_key, body[:_SHAPE_BYTES])
        facts = (tuple(sorted((headers or {}).items())), path, tuple(commands), _Walker.fast)
        entry = cache.get(cache_key)
        if isinstance(entry, Snapshot) and entry.facts == facts and len(body) > entry.pos and body.startswith(
            entry.prefix
        ):
            walker = _Walker(body, headers, path, commands, entry)
            if walker.mcp_names == entry.mcp_names and walker.known == entry.known:
                snap = entry
                walker.restore(snap)
                walker.snap_from = snap.index + 1
            else:
                walker = None  # the body as a whole says something new: walk it all
        if snap is None:
            cache.misses += 1
        else:
            cache.hits += 1
    if walker is None:
        walker = _Walker(body, headers, path, commands)
        if entry is not None:
            walker.snap_from = max(0, entry.message_count - 1)
    if cache is not None and cache_key is not None:
        walker.memos = {}
    error: str | None = None
    try:
        if snap is not None:
            walker.run_resumed(snap)
        else:
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
    prompt = (prompt_category, prompt_item)
    cuts = _cuts(walker.spans, walker.breakpoints)
    if snap is not None and (
        error is not None or prompt != snap.prompt or cuts[: snap.part.next_cut] != snap.part.passed
    ):
        # The prefix's regions were split or named for another shape of call: from the first byte.
        assert cache is not None
        cache.hits -= 1
        cache.misses += 1
        cache.put(cache_key, Hint(walker.message_count))
        return attribute_request(body, headers=headers, path=path, commands=commands)

    n = walker.n
    limit = walker.good if error is None else max([walker.good] + [r[1] for r in walker.regions])
    limit = min(limit, n)
    raw_regions = walker.regions  # after a resumed walk: only those past the reused prefix
    if raw_regions and max(map(operator.itemgetter(1), raw_regions)) > limit:
        raw_regions = [r for r in raw_regions if r[1] <= limit]
    raw_regions.sort()  # the walk appends in byte order almost everywhere: a near-linear sort
    details = walker.details
    if prompt_category != SYSTEM and (SYSTEM, PROMPT) in details:
        details[(prompt_category, prompt_item)] = details.pop((SYSTEM, PROMPT))
    elif (SYSTEM, PROMPT) in details:
        details[(SYSTEM, prompt_item)] = details.pop((SYSTEM, PROMPT))
    noting = cache is not None and cache_key is not None and error is None and walker.snapped is not None
    note_after = int(walker.snapped["regions"]) if noting and walker.snapped else None  # type: ignore[call-overload]
    new, sizes, noted = partition_from(
        raw_regions, limit, cuts, prompt, resume=snap.part if snap else None, note_after=note_after
    )
    regions = snap.out + new if snap is not None else new

    # Bytes per item between breakpoints, for allocate(): the prefix's bins, then the new segments.
    bins = profile.copy_bins(snap.bins) if snap is not None else {}
    cands = profile.candidates(walker.breakpoints)
    seg_cursor = snap.seg_cursor if snap is not None else 0
    k = noted.out if noted is not None else len(new)
    seg_cursor = _add_bins(bins, new[:k], seg_cursor, None, walker.spans, cands)
    fresh: Snapshot | None = None
    if noted is not None:
        fresh = walker.snapshot(snap, facts)
        if fresh is not None:
            fresh.out = regions[: len(regions) - len(new) + k]
            fresh.part = noted
            fresh.part.out = len(fresh.out)
            fresh.bins = profile.copy_bins(bins)
            fresh.seg_cursor = seg_cursor
            fresh.prompt = prompt
    _add_bins(bins, new[k:], seg_cursor, n, walker.spans, cands)
    if cache is not None and cache_key is not None:
        if fresh is not None:
            cache.put(cache_key, fresh)
        elif snap is not None and error is None:
            cache.put(cache_key, snap)  # nothing after the reused prefix to note: keep it
        else:
            cache.put(cache_key, Hint(walker.message_count))

    totals = {
        key: ItemTotal(key[0], key[1], size, detail=dict(details.get(key, {}))) for key, size in sizes.items()
    }
    covered = sum(sizes.values())
    unattributed = n - covered
    if unattributed:
        detail = {"parse_error": error} if error else {}
        totals[(UNATTRIBUTED, "")] = ItemTotal(UNATTRIBUTED, "", unattributed, detail=detail)
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
        bins=bins,
        speed=walker.speed,
    )


def _add_bins(
    bins: profile.Bins,
    regions: list[Region],
    cursor: int,
    stop: int | None,
    spans: dict[str, tuple[int, int]],
    cands: dict[int, list[int]],
) -> int:
    """Add the segments of ``regions`` (with the unattributed gaps before each, from ``cursor``,
    and after the last up to ``stop`` when given) to ``bins``; the end of the last one added."""

    def segments() -> Iterator[tuple[int, int, str, str]]:
        at = cursor
        for region in regions:
            if region[0] > at:
                yield (at, region[0], UNATTRIBUTED, "")
            yield region
            at = region[1]
        if stop is not None and stop > at:
            yield (at, stop, UNATTRIBUTED, "")

    profile.add_segments(bins, segments(), spans, cands)
    if stop is not None:
        return max(stop, cursor)
    return regions[-1][1] if regions else cursor


def classify_call(body: bytes, headers: Mapping[str, str] | None = None, path: str | None = None) -> str:
    """main | subagent | compaction | title | side | count_tokens (see :func:`attribute_request`)."""
    return attribute_request(body, headers=headers, path=path).call_kind
