"""Splitting decoded context text into attributed sections.

Claude Code packs several sources into one string: the ``role: "system"``
message holds hook output, the agent listing, MCP instructions and the skills
listing one after the other; the first user message's ``<system-reminder>``
holds every CLAUDE.md plus the current date. These functions work on the decoded
text and return a partition of it into :class:`Section` s (char offsets); the
walker maps the boundaries back to raw byte offsets.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from .types import (
    AGENTS,
    COMPACTION,
    HOOKS,
    MCP,
    MEMORY,
    REMINDERS,
    SKILLS,
    SLASH_COMMANDS,
    USER_PROMPT,
)


@dataclass(slots=True)
class Section:
    start: int
    end: int
    category: str
    item: str
    detail: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Known:
    """Names learnt from elsewhere in the request (or from the caller)."""

    servers: frozenset[str] = frozenset()  # MCP servers with tools in this request
    # Slash commands: their listing lines look exactly like skills' lines, so only
    # names invoked in this request or supplied by the caller are told apart.
    commands: frozenset[str] = frozenset()


@dataclass(slots=True)
class UserState:
    """What earlier blocks told us about the next ones."""

    pending_skill: str | None = None  # a Skill tool_result was seen in this message
    command: str | None = None  # the last slash command seen in the conversation
    expect_body: bool = False  # the next text block is the command's expanded body
    prompt_count: int = 0
    compaction_instruction: bool = False


_REMINDER = re.compile(r"<system-reminder>(.*?)</system-reminder>", re.S)

# Section headers Claude Code writes at the start of a line. The claudeMd section
# runs until a context key (``# currentDate``): CLAUDE.md files are markdown and
# their own headings must not end it, hence the lower-camel-case rule.
_HEADERS = re.compile(
    r"^(?:"
    r"(?P<hook>(?P<event>[A-Z][A-Za-z]+)(?::[\w-]+)? hook "
    r"(?:success|additional context|blocking error|error|feedback)\b)"
    r"|(?P<agents>Available agent types for the Agent tool)"
    r"|(?P<mcp># MCP Server Instructions)"
    r"|(?P<skills>The following skills are available)"
    r"|(?P<claudemd># claudeMd[ \t]*$)"
    r"|(?P<ctxkey># (?P<key>[a-z][A-Za-z]+)[ \t]*$)"
    r"|(?P<ctxhead>As you answer the user's questions, you can use the following context:)"
    r"|(?P<ctxtail>[ \t]*IMPORTANT: this context may or may not be relevant)"
    r")",
    re.M,
)
_MEMORY_FILE = re.compile(r"^Contents of (?P<path>.+) \((?P<desc>[^()\n]*)\):[ \t]*$", re.M)
_LISTING_ENTRY = re.compile(r"^- (?P<name>[^:\n]+): ", re.M)
_MCP_SERVER = re.compile(r"^## (?P<name>\S+)[ \t]*$", re.M)
_COMMAND_NAME = re.compile(r"<command-name>/?(?P<name>[^<]*)</command-name>")
_COMMAND_ARGS = re.compile(r"<command-args>(?P<args>.*?)</command-args>", re.S)
_SKILL_BASE = re.compile(r"Base directory for this skill:\s*(?P<path>[^\n]+)")

BILLING_PREFIX = "x-anthropic-billing-header:"
COMPACTION_INSTRUCTION = "CRITICAL: Respond with TEXT ONLY"
COMPACTION_SUMMARY = "This session is being continued from a previous conversation"
COMPACTION_CONTINUE = "Continue from where you left off."
TITLE_PROMPT = "Generate a concise, sentence-case title"


def content_hash(text: str) -> str:
    """sha256 of the text (UTF-8), first 12 hex digits."""
    try:
        # surrogateescape gives back the original bytes of a file read with it (U+DC80-DCFF).
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        # Any other lone surrogate (a JSON "\udf89" escape) still needs some stable bytes.
        raw = text.encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).hexdigest()[:12]


def _memory(text: str, start: int, end: int) -> list[Section]:
    out: list[Section] = []
    # Slices, not pos/endpos: "^" must match at the start of the section itself.
    files = list(_MEMORY_FILE.finditer(text[start:end]))
    first = start + files[0].start() if files else end
    out.append(Section(start, first, MEMORY, "(claudeMd header)"))
    for i, m in enumerate(files):
        stop = start + files[i + 1].start() if i + 1 < len(files) else end
        body = text[start + m.end() : stop].strip("\n")
        path = m.group("path")
        detail = {"path": path, "description": m.group("desc"), "sha256_12": content_hash(body), "chars": len(body)}
        out.append(Section(start + m.start(), stop, MEMORY, path, detail))
    return out


def listing_item(name: str) -> str:
    """The item of one entry of a skills, commands or agents listing: ``listing:<name>``.

    One item per entry, so what it costs to keep a skill, command or agent on offer is
    its own total (insights prices the unused ones), apart from the listing's header.
    """
    return f"listing:{name}"


def _listing(text: str, start: int, end: int, category: str, known: Known | None = None) -> list[Section]:
    """A listing split into its header (``listing``) and one section per ``- name: ...`` entry.

    In the skills listing, the lines of known slash commands go to ``slash_commands``.
    """
    entries = list(_LISTING_ENTRY.finditer(text[start:end]))
    first = start + entries[0].start() if entries else end
    out = [Section(start, first, category, "listing", {"entries": len(entries)})]
    for i, m in enumerate(entries):
        name = m.group("name").strip()
        a = start + m.start()
        b = start + entries[i + 1].start() if i + 1 < len(entries) else end
        command = name.lstrip("/")
        if known is not None and command in known.commands:
            detail = {"command": command, "listing_chars": b - a}
            out.append(Section(a, b, SLASH_COMMANDS, listing_item(command), detail))
        else:
            out.append(Section(a, b, category, listing_item(name), {"name": name, "listing_chars": b - a}))
    return [sec for sec in out if sec.end > sec.start]


def _mcp_instructions(text: str, start: int, end: int, known: Known) -> list[Section]:
    heads = [m for m in _MCP_SERVER.finditer(text[start:end]) if not known.servers or m.group("name") in known.servers]
    out = [Section(start, start + heads[0].start() if heads else end, MCP, "(instructions header)")]
    for i, m in enumerate(heads):
        stop = start + heads[i + 1].start() if i + 1 < len(heads) else end
        name = m.group("name")
        detail = {"server": name, "chars": stop - start - m.end()}
        out.append(Section(start + m.start(), stop, MCP, f"{name}/instructions", detail))
    return out


def context_sections(
    text: str, start: int, end: int, default_category: str, default_item: str, known: Known
) -> list[Section]:
    """Partition ``text[start:end]`` by the context headers found at line starts."""
    heads: list[tuple[int, str, re.Match[str]]] = []
    in_memory = False
    for m in _HEADERS.finditer(text[start:end]):
        kind = m.lastgroup or ""
        if m.group("hook"):
            kind = "hook"
        elif m.group("ctxkey"):
            kind = "ctxkey"
        if in_memory and kind not in ("ctxkey", "ctxtail", "claudemd"):
            continue  # a CLAUDE.md's own text, not a header
        in_memory = kind == "claudemd"
        heads.append((start + m.start(), kind, m))
    out: list[Section] = []
    if heads and not text[start : heads[0][0]].strip():
        heads[0] = (start, heads[0][1], heads[0][2])  # leading blank lines join the first section
    if not heads or heads[0][0] > start:
        out.append(Section(start, heads[0][0] if heads else end, default_category, default_item))
    for i, (pos, kind, m) in enumerate(heads):
        stop = heads[i + 1][0] if i + 1 < len(heads) else end
        if kind == "hook":
            out.append(Section(pos, stop, HOOKS, m.group("event"), {"chars": stop - pos}))
        elif kind == "agents":
            out.extend(_listing(text, pos, stop, AGENTS))
        elif kind == "skills":
            out.extend(_listing(text, pos, stop, SKILLS, known))
        elif kind == "mcp":
            out.extend(_mcp_instructions(text, pos, stop, known))
        elif kind == "claudemd":
            out.extend(_memory(text, pos, stop))
        elif kind == "ctxkey":
            out.append(Section(pos, stop, REMINDERS, m.group("key")))
        else:  # the context reminder's own opening and closing sentences
            out.append(Section(pos, stop, REMINDERS, "context"))
    return out


def reminder_sections(
    text: str, default_category: str, default_item: str, known: Known, outside: tuple[str, str] | None = None
) -> list[Section]:
    """Partition text holding ``<system-reminder>`` blocks and plain text between them.

    Reminder tags belong to the section they wrap. Text outside reminders gets
    ``outside`` (category, item), else the default; whitespace-only text between
    sections joins its neighbour. Always covers ``[0, len(text))``.
    """
    outside_cat, outside_item = outside if outside else (default_category, default_item)
    pieces: list[Section] = []
    cursor = 0
    for m in _REMINDER.finditer(text):
        if m.start() > cursor and text[cursor : m.start()].strip():
            pieces.extend(context_sections(text, cursor, m.start(), outside_cat, outside_item, known))
        inner_item = default_item if default_category == REMINDERS else "other"
        inner = context_sections(text, m.start(1), m.end(1), REMINDERS, inner_item, known)
        inner[0].start = m.start()
        inner[-1].end = m.end()
        pieces.extend(inner)
        cursor = m.end()
    if cursor < len(text) and (text[cursor:].strip() or not pieces):
        pieces.extend(context_sections(text, cursor, len(text), outside_cat, outside_item, known))
    if not pieces:
        return [Section(0, len(text), outside_cat, outside_item)]
    pieces[0].start = 0
    for left, right in zip(pieces, pieces[1:]):
        left.end = right.start
    pieces[-1].end = len(text)
    return [p for p in pieces if p.end > p.start] or [Section(0, len(text), outside_cat, outside_item)]


def user_text_sections(text: str, state: UserState, known: Known) -> list[Section]:
    """Classify one text block of a user message (not inside a tool result)."""
    head = text.lstrip()[:200]
    whole = len(text)
    if head.startswith(("<command-message>", "<command-name>")):
        m = _COMMAND_NAME.search(text)
        name = m.group("name").strip() if m else "(unknown)"
        args = _COMMAND_ARGS.search(text)
        state.command = name
        state.expect_body = True
        detail = {"command": name, "args": args.group("args") if args else "", "message_chars": whole}
        return [Section(0, whole, SLASH_COMMANDS, name, detail)]
    if head.startswith(("<local-command-stdout>", "<local-command-stderr>")):
        state.expect_body = False  # a local command has output instead of a prompt body
        name = state.command or "(local)"
        return [Section(0, whole, SLASH_COMMANDS, name, {"command": name, "stdout_chars": whole})]
    if head.startswith("<local-command-caveat>"):
        return [Section(0, whole, SLASH_COMMANDS, "(caveat)")]
    skill = _SKILL_BASE.match(text.lstrip())
    if skill or state.pending_skill:
        name = state.pending_skill or posixpath.basename(skill.group("path").strip().rstrip("/"))  # type: ignore[union-attr]
        via = "Skill tool" if state.pending_skill else f"/{state.command}" if state.expect_body else "skill body"
        state.pending_skill = None
        state.expect_body = False
        return [Section(0, whole, SKILLS, name, {"skill": name, "via": via, "chars": whole})]
    if state.expect_body and not head.startswith("<system-reminder>"):
        state.expect_body = False
        name = state.command or "(unknown)"
        return [Section(0, whole, SLASH_COMMANDS, name, {"command": name, "body_chars": whole})]
    if head.startswith(COMPACTION_SUMMARY):
        return [Section(0, whole, COMPACTION, "summary", {"chars": whole})]
    if head.startswith(COMPACTION_CONTINUE) and whole < 200:
        return [Section(0, whole, COMPACTION, "continuation", {"chars": whole})]
    if head.startswith(COMPACTION_INSTRUCTION):
        state.compaction_instruction = True
        return [Section(0, whole, COMPACTION, "instruction", {"chars": whole})]
    state.prompt_count += 1
    item = f"#{state.prompt_count}"
    sections = reminder_sections(text, REMINDERS, "other", known, outside=(USER_PROMPT, item))
    prompt = "".join(text[s.start : s.end] for s in sections if s.category == USER_PROMPT).strip()
    if prompt:
        for s in sections:
            if s.category == USER_PROMPT:
                s.detail = {"text": prompt, "chars": len(prompt)}
    else:
        state.prompt_count -= 1
    return sections


def system_message_sections(text: str, known: Known) -> list[Section]:
    """The ``role: "system"`` message: hook output, listings, MCP instructions."""
    return reminder_sections(text, REMINDERS, "system message", known)
