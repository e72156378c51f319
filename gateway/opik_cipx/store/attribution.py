"""Per-call attribution totals in the spool (tables from migrations m006 and m007).

Only totals are stored — per category and per item, request and response
side — because those are what stats, status and the session view aggregate.
Regions are recomputed from the stored body on demand (``analysis.analyze``).
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from typing import Any

from ..attribute import Attribution, ItemTotal
from ..attribute.analysis import SessionCall, analyze
from ..attribute.responses import stored_chain
from ..model import Exchange
from ..pricing import PriceTable
from .migrations import transaction


def total_dict(t: ItemTotal) -> dict[str, Any]:
    return {"category": t.category, "item": t.item, "bytes": t.bytes, "tokens": t.tokens,
            "cost_usd": t.cost_usd, "detail": t.detail}


def summary(attr: Attribution, commands: tuple[str, ...] = ()) -> dict[str, Any]:
    """What is stored per call: the totals, and the command names a re-analysis must reuse.

    A user prompt's text is left out (its length stays): every call of a session
    carries all of its earlier prompts, so storing their text with each call grew a
    session's rows with the square of its length. The text is in the stored body;
    a re-analysis (``reanalyze``) finds it there.
    """
    out = {"commands": list(commands), **totals(attr)}
    for side in ("items", "output_items"):
        for item in out[side]:
            detail = item["detail"]
            if isinstance(detail, dict) and "text" in detail:
                item["detail"] = {k: v for k, v in detail.items() if k != "text"}
    return out


def totals(attr: Attribution) -> dict[str, Any]:
    """JSON-safe: everything of an Attribution except its regions."""
    return {
        "call_kind": attr.call_kind,
        "agent_id": attr.agent_id,
        "body_bytes": attr.body_bytes,
        "unattributed_bytes": attr.unattributed_bytes,
        "messages_bytes": messages_bytes(attr),
        "categories": {name: total_dict(t) for name, t in attr.categories.items()},
        "items": [total_dict(t) for t in attr.items],
        "output_items": [total_dict(t) for t in attr.output_items],
        "cache_split": attr.cache_split,
        "parse_error": attr.parse_error,
    }


def messages_bytes(attr: Attribution) -> int:
    span = attr.spans.get("messages")
    return span[1] - span[0] if span else 0


# A reader decodes at most this many summaries to get one back (about 30 us each): a chain
# longer than that starts again from a summary compressed on its own.
MAX_DEPTH = 16
_LEVEL = 6


def _deflate(doc: bytes, base: bytes | None) -> bytes:
    """Raw deflate (no header: a few bytes a row), with ``base`` as the preset dictionary."""
    if base:
        c = zlib.compressobj(_LEVEL, zlib.DEFLATED, -15, zdict=base)
    else:
        c = zlib.compressobj(_LEVEL, zlib.DEFLATED, -15)
    return c.compress(doc) + c.flush()


def _inflate(blob: bytes, base: bytes | None) -> bytes:
    d = zlib.decompressobj(-15, zdict=base) if base else zlib.decompressobj(-15)
    return d.decompress(blob) + d.flush()


class BrokenChain(RuntimeError):
    """A stored summary is compressed against a call that is no longer stored."""


def _decoded(conn: sqlite3.Connection, seq: int) -> bytes:
    """The JSON bytes of call ``seq``'s summary, decoding its chain from the oldest link."""
    rows = conn.execute(
        "WITH RECURSIVE chain(seq, base, summary, n) AS ("
        " SELECT seq, base, summary, 0 FROM attribution_calls WHERE seq = ?"
        " UNION ALL SELECT c.seq, c.base, c.summary, chain.n + 1 FROM attribution_calls c"
        " JOIN chain ON c.seq = chain.base WHERE chain.n < ?)"
        " SELECT base, summary FROM chain ORDER BY n DESC",
        (seq, MAX_DEPTH * 4),
    ).fetchall()
    if not rows:
        raise KeyError(seq)
    if rows[0][0] is not None:
        raise BrokenChain(f"attribution of call {seq}: its chain ends at a missing call {rows[0][0]}")
    doc: bytes | None = None
    for base, summary in rows:
        if isinstance(summary, str):
            doc = summary.encode()
        else:
            doc = _inflate(bytes(summary), doc if base is not None else None)
    assert doc is not None
    return doc


def _base_for(
    conn: sqlite3.Connection, exchange_id: str, agent_id: str | None, below: int | None
) -> tuple[int, int] | None:
    """The newest earlier call of the same session and agent to compress against: (seq, depth).

    ``below`` (the call's own seq when it is stored again) keeps every chain pointing to
    smaller seqs, so a chain never loops back on itself.
    """
    row = conn.execute("SELECT session_id FROM exchanges WHERE id = ?", (exchange_id,)).fetchone()
    if row is None or row[0] is None:
        return None
    found = conn.execute(
        "SELECT c.seq, c.depth FROM exchanges e JOIN attribution_calls c ON c.exchange_id = e.id"
        " WHERE e.session_id = ? AND e.id != ? AND c.agent_id IS ? AND c.seq < ?"
        " ORDER BY e.started_at DESC, e.id DESC LIMIT 1",
        (row[0], exchange_id, agent_id, below if below is not None else 1 << 62),
    ).fetchone()
    if found is None or found[1] + 1 >= MAX_DEPTH:
        return None
    return found[0], found[1]


class _LastSummary:
    """The last few summaries this process stored, decoded, with the call and bytes stored.

    Saves decoding the base's chain for the next call of the same session. Checked
    against the row before use: another process may have stored that call again, and
    the exchange id tells one spool's row ``seq`` from another's.
    """

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: dict[int, tuple[str, bytes, bytes]] = {}  # seq -> (exchange id, stored, decoded)

    def get(self, conn: sqlite3.Connection, seq: int) -> bytes:
        hit = self.entries.get(seq)
        if hit is not None:
            row = conn.execute("SELECT exchange_id, summary FROM attribution_calls WHERE seq = ?", (seq,)).fetchone()
            if row is not None and row[0] == hit[0] and not isinstance(row[1], str) and bytes(row[1]) == hit[1]:
                return hit[2]
        return _decoded(conn, seq)

    def put(self, seq: int, exchange_id: str, stored: bytes, decoded: bytes) -> None:
        self.entries.pop(seq, None)
        if len(self.entries) >= 8:  # a handful of sessions and agents at once; oldest out
            self.entries.pop(next(iter(self.entries)))
        self.entries[seq] = (exchange_id, stored, decoded)


_last = _LastSummary()


def _key_ids(conn: sqlite3.Connection, keys: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """The id of every (category, item) name, adding the names not stored yet.

    Looked up first and inserted only when missing: a session's calls name the same items
    again and again, so the insert is almost never needed.
    """
    out = _known_key_ids(conn, list(keys))
    missing = sorted(keys - out.keys())
    if missing:
        conn.executemany("INSERT OR IGNORE INTO attribution_keys (category, item) VALUES (?, ?)", missing)
        out.update(_known_key_ids(conn, missing))
    return out


def _known_key_ids(conn: sqlite3.Connection, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for i in range(0, len(pairs), 400):  # bound the parameters of one statement
        part = pairs[i : i + 400]
        marks = ",".join("(?, ?)" for _ in part)
        for kid, category, item in conn.execute(
            f"WITH k(category, item) AS (VALUES {marks}) SELECT a.id, a.category, a.item FROM attribution_keys a"
            " JOIN k ON a.category = k.category AND a.item = k.item",
            [v for pair in part for v in pair],
        ):
            out[(category, item)] = kid
    return out


def _rekey_dependents(conn: sqlite3.Connection, seq: int) -> None:
    """Store the calls compressed against ``seq`` on their own, before ``seq`` changes or goes."""
    dependents = conn.execute("SELECT seq FROM attribution_calls WHERE base = ?", (seq,)).fetchall()
    for (dep,) in dependents:
        doc = _decoded(conn, dep)
        conn.execute("UPDATE attribution_calls SET base = NULL, depth = 0, summary = ? WHERE seq = ?",
                     (_deflate(doc, None), dep))


def save(conn: sqlite3.Connection, exchange_id: str, attr: Attribution, commands: tuple[str, ...] = ()) -> None:
    """Replace the stored attribution of one call (idempotent on re-capture).

    The summary is compressed against the previous call of the same session and agent
    (see m007): a call that resends the conversation pays only for what changed.
    """
    doc = json.dumps(summary(attr, commands), separators=(",", ":")).encode()
    rows = [(0, t.category, t.item, t.bytes, t.tokens, t.cost_usd) for t in attr.items]
    rows += [(1, t.category, t.item, t.bytes, t.tokens, t.cost_usd) for t in attr.output_items]
    with transaction(conn):
        old = conn.execute("SELECT seq FROM attribution_calls WHERE exchange_id = ?", (exchange_id,)).fetchone()
        seq: int | None = old[0] if old else None
        if seq is not None:
            if _decoded(conn, seq) == doc:
                stored_same = True
            else:
                stored_same = False
                _rekey_dependents(conn, seq)
        else:
            stored_same = False
        base = _base_for(conn, exchange_id, attr.agent_id, seq)
        base_doc = _last.get(conn, base[0]) if base is not None else None
        blob = _deflate(doc, base_doc)
        values = (attr.call_kind, attr.agent_id, attr.body_bytes, attr.unattributed_bytes, messages_bytes(attr))
        if seq is None:
            cur = conn.execute(
                "INSERT INTO attribution_calls (exchange_id, call_kind, agent_id, body_bytes, unattributed_bytes,"
                " messages_bytes, base, depth, summary) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (exchange_id, *values, base[0] if base else None, base[1] + 1 if base else 0, blob),
            )
            seq = cur.lastrowid
            assert seq is not None
        elif not stored_same:
            conn.execute(
                "UPDATE attribution_calls SET call_kind = ?, agent_id = ?, body_bytes = ?, unattributed_bytes = ?,"
                " messages_bytes = ?, base = ?, depth = ?, summary = ? WHERE seq = ?",
                (*values, base[0] if base else None, base[1] + 1 if base else 0, blob, seq),
            )
        if not stored_same:
            _last.put(seq, exchange_id, blob, doc)
        keys = _key_ids(conn, {(c, i) for _, c, i, *_ in rows})
        if old is not None:
            conn.execute("DELETE FROM attribution_totals WHERE call = ?", (seq,))
        # Items can repeat a (category, item) key across sides only; within a side they are unique.
        conn.executemany(
            "INSERT OR REPLACE INTO attribution_totals (call, side, key, bytes, tokens, cost_usd)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(seq, side, keys[(c, i)], b, t, cost) for side, c, i, b, t, cost in rows],
        )


def forget(conn: sqlite3.Connection, exchange_ids: list[str]) -> int:
    """Delete the stored attribution of these calls; calls stored against them are kept whole."""
    gone = 0
    with transaction(conn):
        for exchange_id in exchange_ids:
            row = conn.execute("SELECT seq FROM attribution_calls WHERE exchange_id = ?", (exchange_id,)).fetchone()
            if row is None:
                continue
            _rekey_dependents(conn, row[0])
            conn.execute("DELETE FROM attribution_totals WHERE call = ?", (row[0],))
            conn.execute("DELETE FROM attribution_calls WHERE seq = ?", (row[0],))
            gone += 1
    return gone


def load(conn: sqlite3.Connection, exchange_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT seq FROM attribution_calls WHERE exchange_id = ?", (exchange_id,)).fetchone()
    if row is None:
        return None
    loaded: dict[str, Any] = json.loads(_decoded(conn, row[0]))
    return loaded


def stored_commands(conn: sqlite3.Connection, exchange_id: str) -> tuple[str, ...]:
    stored = load(conn, exchange_id)
    return tuple(stored.get("commands") or ()) if stored else ()


def reanalyze(conn: sqlite3.Connection, ex: Exchange, prices: PriceTable | None) -> Attribution:
    """A stored call analyzed again with what its capture knew, so every reader sees the same buckets."""
    stored = load(conn, ex.id) or {}
    calls, inherited = stored_chain(stored.get("cache_split") or {})  # a Codex turn's previous responses
    return analyze(ex, prices, commands=tuple(stored.get("commands") or ()), calls=calls, inherited=inherited)


def session_calls(conn: sqlite3.Connection, session_id: str) -> list[SessionCall]:
    """A session's attributed LLM calls in order, for compaction deltas and the session view."""
    rows = conn.execute(
        "SELECT e.id, e.started_at, a.call_kind, a.agent_id, a.messages_bytes,"
        " e.input_tokens + e.cache_creation_input_tokens + e.cache_read_input_tokens"
        " FROM exchanges e JOIN attribution a ON a.exchange_id = e.id"
        " WHERE e.session_id = ? ORDER BY e.started_at, e.id",
        (session_id,),
    ).fetchall()
    return [SessionCall(*row) for row in rows]
