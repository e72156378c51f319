"""Recommendations from what each call carried and what the session used.

A thing offered in every request (an MCP server's tools, a built-in tool, a skill,
agent or slash command in its listing, a CLAUDE.md) costs its attributed share of
every call it rode in. Each function here streams request-side attribution rows of
a window from SQL and returns one :class:`Recommendation` per target, its saving
the sum of that attributed cost: exactly what the calls would have cost less
without those bytes.

Actions are only the settings tests/test_insights_actions.py shows removing the
bytes from the next request under the real Claude Code CLI; elsewhere the action
says no setting does.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

from ..attribute.sections import listing_item
from . import stats

EVIDENCE_LIMIT = 50  # call ids listed per recommendation; calls_present gives the full count
# A memory file is worth a line once it costs this much per call on average (tokens).
LARGE_MEMORY_TOKENS = 1000
NO_SETTING = "no setting removes it"
LISTING = listing_item("")  # "listing:": the prefix of one entry's item


@dataclass(slots=True)
class Recommendation:
    kind: str
    target: str
    calls_present: int
    uses: int
    tokens: int
    saving_usd: float
    action: str
    evidence: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)  # kind-specific figures behind the saving


def mcp_action(server: str) -> str:
    """Verified: ``disabledMcpjsonServers`` drops a .mcp.json server's tool schemas and its
    instructions; a permissions deny rule drops the schemas only, so it is not the advice.
    A plugin's server (``plugin_<plugin>_<server>``) is not a .mcp.json one: say so."""
    if server.startswith("plugin_"):
        return (f"a plugin's server: no setting has been verified to remove it (disabledMcpjsonServers covers"
                f' .mcp.json servers only); {{"permissions": {{"deny": ["mcp__{server}"]}}}} removes an MCP'
                " server's tool schemas, not its instructions (verified on a .mcp.json server)")
    return (f'add {{"disabledMcpjsonServers": ["{server}"]}} to your settings (a server from .mcp.json;'
            " for one configured elsewhere no setting has been verified)")


def builtin_action(tool: str) -> str:
    """Verified: a permissions deny rule takes a built-in tool's schema out of the request."""
    return f'add {{"permissions": {{"deny": ["{tool}"]}}}} to your settings'


def agent_action(agent: str) -> str:
    """Verified: a deny rule on ``Agent(<name>)`` takes the agent out of the agents listing."""
    return f'add {{"permissions": {{"deny": ["Agent({agent})"]}}}} to your settings'


def skill_action(skill: str) -> str:
    """Verified: ``disable-model-invocation: true`` in a SKILL.md takes it out of the listing
    (a deny rule on ``Skill(<name>)`` does not)."""
    return (f"add `disable-model-invocation: true` to the front matter of .claude/skills/{skill}/SKILL.md"
            f" (you can still run it as /{skill}; for a plugin's or a built-in skill no setting has been verified)")


def command_action(command: str) -> str:
    """Verified: ``disable-model-invocation: true`` in a command file takes it out of the listing."""
    return (f"add `disable-model-invocation: true` to the front matter of .claude/commands/{command}.md"
            f" (/{command} still works when you type it)")


MEMORY_ACTION = f"{NO_SETTING}: every call carries the file whole; shorten it or move rarely needed parts out"


def ordered(ids: set[str]) -> list[str]:
    """Up to EVIDENCE_LIMIT of ``ids``, oldest call first (ids are UUIDv7: they sort by time)."""
    return sorted(ids)[:EVIDENCE_LIMIT]


Presence = dict[str, tuple[set[str], int, float]]


def presence(conn: sqlite3.Connection, win: stats.Window, condition: str, args: list[Any] | None = None,
             key: str = "item") -> Presence:
    """target -> (calls that carried it, tokens, cost) for request-side items matching ``condition``.

    ``key`` names the target: the item, the MCP server of an ``mcp`` item, or the entry
    of a ``listing:<name>`` item. Rows stream from SQLite.
    """
    where, params = stats.where(win, "e")
    found: Presence = {}
    for item, exchange_id, tokens, cost in conn.execute(
        "SELECT i.item, i.exchange_id, i.tokens, i.cost_usd FROM attribution_items i"
        f" JOIN exchanges e ON e.id = i.exchange_id WHERE {where} AND i.side = 'request' AND {condition}",
        [*params, *(args or [])],
    ):
        if key == "server":
            target = stats.mcp_server(item)
        elif key == "entry":
            target = item[len(LISTING):]
        else:
            target = item
        ids, t, c = found.get(target, (set(), 0, 0.0))
        ids.add(exchange_id)
        found[target] = (ids, t + int(tokens), c + float(cost or 0.0))
    return found


def tool_uses(conn: sqlite3.Connection, win: stats.Window) -> dict[str, int]:
    """Tool name -> how many times it was seen called: the responses that asked for it
    (``tool_use:<name>`` on the response side), and at least once per session whose
    requests carry its input/result (a call made before the window, or answered by a
    response the gateway did not see whole, still counts as a use)."""
    where, params = stats.where(win, "e")
    out: dict[str, int] = {}
    for name, n in conn.execute(
        "SELECT substr(i.item, 10), count(*) FROM attribution_items i JOIN exchanges e ON e.id = i.exchange_id"
        f" WHERE {where} AND i.side = 'response' AND i.item LIKE 'tool_use:%' GROUP BY i.item",
        params,
    ):
        out[str(name)] = int(n)
    seen: dict[str, int] = {}
    for category, item, sessions in conn.execute(
        "SELECT i.category, i.item, count(DISTINCT coalesce(e.session_id, e.id)) FROM attribution_items i"
        f" JOIN exchanges e ON e.id = i.exchange_id WHERE {where} AND i.side = 'request' AND"
        " (i.category = 'tool_io' OR (i.category = 'mcp' AND i.item LIKE '%/io:%')"
        " OR (i.category = 'agents' AND i.item LIKE '%/io')) GROUP BY i.category, i.item",
        params,
    ):
        if category == "mcp":
            server, _, tool = item.partition("/io:")
            names = [f"mcp__{server}__{tool}"]
        elif category == "agents":
            names = ["Agent", "Task"]  # the subagent tool's name differs across versions
        else:
            names = [item]
        for name in names:
            seen[name] = seen.get(name, 0) + int(sessions)
    for name, n in seen.items():
        out[name] = max(out.get(name, 0), n)
    return out


def sessions_using(conn: sqlite3.Connection, win: stats.Window, category: str, items: str) -> dict[str, int]:
    """item -> sessions whose requests carry it (``items`` is a SQL condition on ``i.item``).

    A skill's body, an agent's brief and answer, a command's expansion: once used they
    ride in every later call of the session, so sessions, not calls, count the uses.
    """
    where, params = stats.where(win, "e")
    rows = conn.execute(
        "SELECT i.item, count(DISTINCT coalesce(e.session_id, e.id)) FROM attribution_items i"
        f" JOIN exchanges e ON e.id = i.exchange_id WHERE {where} AND i.side = 'request'"
        f" AND i.category = ? AND {items} GROUP BY i.item",
        [*params, category],
    )
    return {str(item): int(n) for item, n in rows}


def unused_mcp_servers(conn: sqlite3.Connection, win: stats.Window, uses: dict[str, int]) -> list[Recommendation]:
    # Their tool schemas and instructions are the cost of being available.
    cond = "i.category = 'mcp' AND (i.item LIKE '%/tool:%' OR i.item LIKE '%/instructions')"
    out = []
    for server, (ids, tokens, cost) in presence(conn, win, cond, key="server").items():
        if server == "(shared)":
            continue
        prefix = f"mcp__{server}__"
        used = sum(n for name, n in uses.items() if name.startswith(prefix))
        if used <= max(0, len(ids) // 100):  # k = 0, or under one use per hundred calls
            out.append(Recommendation("unused_mcp_server", server, len(ids), used, tokens, cost,
                                      mcp_action(server), ordered(ids)))
    return out


def unused_builtin_tools(conn: sqlite3.Connection, win: stats.Window, uses: dict[str, int]) -> list[Recommendation]:
    return [
        Recommendation("unused_builtin_tool", tool, len(ids), 0, tokens, cost, builtin_action(tool), ordered(ids))
        for tool, (ids, tokens, cost) in presence(conn, win, "i.category = 'builtin_tools'").items()
        if uses.get(tool, 0) == 0
    ]


def unused_listed(conn: sqlite3.Connection, win: stats.Window) -> list[Recommendation]:
    """Skills, agents and slash commands listed in calls and never invoked in the window."""
    listed = "i.item LIKE 'listing:%'"
    out: list[Recommendation] = []
    skill_uses = sessions_using(conn, win, "skills", f"NOT ({listed}) AND i.item != 'listing'")
    agent_io = sessions_using(conn, win, "agents", "i.item LIKE '%/io'")
    agent_uses = {k.removesuffix("/io"): n for k, n in agent_io.items()}
    command_uses = sessions_using(conn, win, "slash_commands",
                                  f"NOT ({listed}) AND i.item NOT IN ('listing', '(caveat)')")
    kinds = (("skills", "unused_skill", skill_uses, skill_action),
             ("agents", "unused_agent", agent_uses, agent_action),
             ("slash_commands", "unused_slash_command", command_uses, command_action))
    listings = {category: presence(conn, win, f"i.category = '{category}' AND {listed}", key="entry")
                for category, *_ in kinds}
    # Until a command is known, its listing line reads as a skill's: a name that is a
    # command anywhere in the window is not a skill.
    commands = set(command_uses) | set(listings["slash_commands"])
    for category, kind, used, action in kinds:
        for name, (ids, tokens, cost) in listings[category].items():
            if used.get(name, 0) == 0 and not (category == "skills" and name.lstrip("/") in commands):
                out.append(Recommendation(kind, name, len(ids), 0, tokens, cost, action(name), ordered(ids)))
    return out


def large_memory_files(conn: sqlite3.Connection, win: stats.Window) -> list[Recommendation]:
    return [
        Recommendation("large_memory_file", path, len(ids), len(ids), tokens, cost, MEMORY_ACTION, ordered(ids),
                       {"tokens_per_call": tokens // len(ids), "cost_per_call_usd": cost / len(ids)})
        for path, (ids, tokens, cost) in presence(conn, win, "i.category = 'memory' AND i.item LIKE '%.md'").items()
        if ids and tokens / len(ids) >= LARGE_MEMORY_TOKENS
    ]


def presence_recommendations(conn: sqlite3.Connection, win: stats.Window) -> list[Recommendation]:
    uses = tool_uses(conn, win)
    return [*unused_mcp_servers(conn, win, uses), *unused_builtin_tools(conn, win, uses),
            *unused_listed(conn, win), *large_memory_files(conn, win)]
