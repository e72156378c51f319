"""Attribution: every byte of a captured request in a named bucket, every token and cent shared out.

Pure: bytes in, data out; no I/O. :func:`attribute_request` finds the regions of
the raw body (byte ranges, sorted, never overlapping; the gaps are the
unattributed bytes, :meth:`Attribution.segments` yields both), :func:`allocate`
shares the call's billed usage over them (see ``allocate.py`` for the cache rule).

Categories and their items (decisions worth knowing when reading a breakdown):

* ``system``: ``billing``, ``identity``, ``main prompt`` (``title prompt`` /
  ``side prompt`` for side calls). On a subagent call the third block is the
  custom agent's own prompt and goes to ``agents`` / ``agent prompt``.
* ``builtin_tools`` per tool; ``mcp``: ``<server>/tool:<tool>``,
  ``<server>/instructions``, ``<server>/io:<tool>`` (calls and results).
* ``tool_io`` per tool name: **tool_use inputs and tool results both go here**
  (not to ``assistant``), so one item shows what a tool costs end to end; details
  count inputs/results, bytes of each, errors, and keep the latest samples.
  Agent/Task calls go to ``agents`` / ``<subagent_type>/io`` instead: a subagent's
  brief and answer are the custom agent's cost.
* ``assistant``: ``text`` and ``thinking`` (thinking text and signatures).
* ``skills``: ``listing`` (the listing's header), ``listing:<name>`` per entry
  of the listing, and one item per skill body (Skill tool or ``/skill``).
  Slash commands share the skills listing; a command's line is split out to
  ``slash_commands`` / ``listing:<name>`` only when its name is known (invoked in
  the body, or passed in ``commands=`` by a caller that read ``.claude/commands``).
* ``slash_commands`` per command: message+args, expanded body, local stdout;
  ``(caveat)`` for the local-command caveat.
* ``agents``: ``listing`` and ``listing:<name>`` as for skills, ``agent prompt``,
  ``<subagent_type>/io``.
* ``memory``: one item per CLAUDE.md path; detail ``sha256_12`` hashes the
  content as injected (Claude Code trims surrounding blank lines).
* ``user_prompt``: ``#1``, ``#2``… in order; detail ``text`` and ``chars``.
* ``hooks`` per event, ``compaction`` (``summary``, ``instruction``,
  ``continuation``), ``reminders`` (``currentDate``, ``context``, ``other``),
  ``media`` (``image:<type>``, ``document``), ``framing`` (top-level settings by
  key, ``structure`` for keys and punctuation), ``unattributed`` (unknown keys,
  block types, anything after the body stops being JSON).
"""

from .allocate import allocate, largest_remainder
from .rawjson import char_to_byte_offsets, decode_string
from .types import CATEGORIES, Attribution, Breakpoint, ItemTotal, Region
from .walk import attribute_request, classify_call, split_mcp_name

__all__ = [
    "CATEGORIES",
    "Attribution",
    "Breakpoint",
    "ItemTotal",
    "Layout",
    "Region",
    "allocate",
    "attribute_request",
    "char_to_byte_offsets",
    "classify_call",
    "decode_string",
    "largest_remainder",
    "split_mcp_name",
]
