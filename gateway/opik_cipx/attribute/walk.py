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

import operator
import re
from collections.abc import Collection, Mapping

from .partition import PROMPT, partition
from .rawjson import Malformed, skip_value, skip_ws
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
)
from .walk_base import REMINDER_TAG, ToolRef, split_mcp_name
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
            i = find("<", i + len(REMINDER_TAG))
        else:
            if (c := command(s, i)) is not None:
                commands.add(c.group(1))
            i = find("<", i + len("<command-name>"))
    else:
        for m in _TAGS.finditer(s, i) if i != -1 else ():
            if m.end() - m.start() == len(REMINDER_TAG):
                reminders.append(m.start())
            elif (c := command(s, m.start())) is not None:
                commands.add(c.group(1))
    return reminders, frozenset(commands)


class _Walker(MessageWalk, SystemWalk):
    """The whole walk: the top-level members here, the parts from the mixins it is made of."""

    def __init__(
        self, body: bytes, headers: Mapping[str, str] | None, path: str | None, commands: Collection[str]
    ) -> None:
        super().__init__(body, headers, path)
        self.reminders, invoked = _scan_tags(self.s)
        self.known = Known(
            servers=frozenset(sp[0] for sp in map(self._split, self.mcp_names) if sp),
            commands=frozenset(c.lstrip("/") for c in commands) | invoked,
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

    # -- results --------------------------------------------------------------------

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
    )


def classify_call(body: bytes, headers: Mapping[str, str] | None = None, path: str | None = None) -> str:
    """main | subagent | compaction | title | side | count_tokens (see :func:`attribute_request`)."""
    return attribute_request(body, headers=headers, path=path).call_kind
