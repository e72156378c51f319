"""The write-ahead outbox: Opik records in the spool until Opik has acknowledged them.

Synchronous and handed its connection, like :class:`~opik_cipx.store.spool.Spool`;
run it on the spool's thread (``AsyncSpool.run``). Every write is one
transaction, so a kill -9 leaves either the whole call's records or none, and
the exchange's mark (``ship_marks``) is written in the same transaction: the
recovery scan after a crash derives exactly the exchanges that lack one.

The outbox is bounded in bytes. Past the bound the oldest records lose their
content first (input, output, prompt text, samples) and keep their counts,
costs, usage and structure; only if that is not enough are the oldest records
dropped whole. Both are counted.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..store.migrations import transaction
from .privacy import redact_metadata

MAX_BATCH_ITEMS = 1000  # Opik's limit per batch request
OPEN_TOOL_TTL = 24 * 3600.0  # a tool_use whose result never came is forgotten after this

# Marks for exchanges that produced no records, and why.
QUEUED = "queued"
DISABLED = "disabled"
SAMPLED_OUT = "sampled_out"
NO_DESTINATION = "no_destination"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(slots=True)
class Item:
    id: str
    kind: str  # trace | span
    seq: int
    payload: bytes

    @property
    def size(self) -> int:
        return len(self.payload)


class Outbox:
    def __init__(self, conn: sqlite3.Connection, *, max_bytes: int = 256 * 1024**2) -> None:
        self.conn = conn
        self.max_bytes = max_bytes

    # --- counters ----------------------------------------------------------------------------

    def _bump(self, name: str, by: int = 1) -> None:
        self.conn.execute(
            "INSERT INTO ship_counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, by),
        )

    def counter(self, name: str) -> int:
        row = self.conn.execute("SELECT value FROM ship_counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    # --- writing -----------------------------------------------------------------------------

    def _put(self, kind: str, record: dict[str, Any], *, session: str | None, exchange_id: str | None) -> None:
        payload = _dumps(record)
        seq = self._bump_seq()
        usage = record.get("usage") or {}
        old = self.conn.execute("SELECT size FROM outbox WHERE id = ?", (record["id"],)).fetchone()
        self.conn.execute(
            """
            INSERT INTO outbox
                (id, kind, seq, session_id, exchange_id, payload, size, shed, cost_usd, tokens, created_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)
            ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, payload = excluded.payload,
                size = excluded.size, shed = 0, cost_usd = excluded.cost_usd, tokens = excluded.tokens
            """,
            (
                record["id"],
                kind,
                seq,
                session,
                exchange_id,
                payload,
                len(payload),
                record.get("total_estimated_cost"),
                int(usage.get("total_tokens", 0)) if isinstance(usage, dict) else 0,
                time.time(),
            ),
        )
        self._bump("outbox_bytes", len(payload) - (old[0] if old else 0))

    def _bump_seq(self) -> int:
        self._bump("seq")
        return self.counter("seq")

    def put(
        self, kind: str, record: dict[str, Any], *, session: str | None = None, exchange_id: str | None = None
    ) -> None:
        """Queue one record (replacing any unshipped version with the same id), then enforce the bound."""
        with transaction(self.conn):
            self._put(kind, record, session=session, exchange_id=exchange_id)
            self._enforce_bound()

    def put_many(self, records: Iterable[tuple[str, dict[str, Any]]]) -> int:
        n = 0
        with transaction(self.conn):
            for kind, record in records:
                self._put(kind, record, session=None, exchange_id=None)
                n += 1
            self._enforce_bound()
        return n

    def is_marked(self, exchange_id: str) -> bool:
        row = self.conn.execute("SELECT 1 FROM ship_marks WHERE exchange_id = ?", (exchange_id,)).fetchone()
        return row is not None

    def mark(self, exchange_id: str, state: str) -> None:
        with transaction(self.conn):
            cur = self.conn.execute(
                "INSERT OR IGNORE INTO ship_marks (exchange_id, state, at) VALUES (?, ?, ?)",
                (exchange_id, state, time.time()),
            )
            if cur.rowcount:
                self._bump(f"marked.{state}")

    # --- one call's records, written by ship.records inside its transaction -------------------

    def session_state(self, session_key: str) -> str | None:
        """The session's trace state as last saved (JSON), or None for a new session."""
        row = self.conn.execute("SELECT state FROM ship_sessions WHERE session_key = ?", (session_key,)).fetchone()
        return None if row is None else str(row[0])

    def open_tool_spans(self, session_key: str, tool_use_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The session's open tool sub-spans among ``tool_use_ids``."""
        out: dict[str, dict[str, Any]] = {}
        for tool_use_id in tool_use_ids:
            row = self.conn.execute(
                "SELECT span FROM ship_tools WHERE tool_use_id = ? AND session_key = ?", (tool_use_id, session_key)
            ).fetchone()
            if row is not None:
                out[tool_use_id] = json.loads(row[0])
        return out

    def save_call(
        self,
        exchange_id: str,
        session_key: str,
        records: list[tuple[str, dict[str, Any]]],
        *,
        state: str,
        opened: dict[str, dict[str, Any]],
        closed: list[str],
    ) -> None:
        """Queue one call's records with its session state, open tools and mark, in one transaction."""
        with transaction(self.conn):
            for tool_use_id in closed:
                self.conn.execute("DELETE FROM ship_tools WHERE tool_use_id = ?", (tool_use_id,))
            for tool_use_id, span in opened.items():
                self.conn.execute(
                    "INSERT OR REPLACE INTO ship_tools (tool_use_id, session_key, span, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (tool_use_id, session_key, _dumps(span).decode("utf-8"), time.time()),
                )
            self.conn.execute(
                "INSERT INTO ship_sessions (session_key, state) VALUES (?, ?) "
                "ON CONFLICT(session_key) DO UPDATE SET state = excluded.state",
                (session_key, state),
            )
            for kind, record in records:
                self._put(kind, record, session=session_key, exchange_id=exchange_id)
            self.conn.execute(
                "INSERT INTO ship_marks (exchange_id, state, at) VALUES (?, ?, ?)", (exchange_id, QUEUED, time.time())
            )
            self._bump(f"marked.{QUEUED}")
            self._enforce_bound()

    # --- the bound ---------------------------------------------------------------------------

    def _enforce_bound(self) -> None:
        total = self.counter("outbox_bytes")
        if total <= self.max_bytes:
            return
        self.conn.execute("DELETE FROM ship_tools WHERE created_at < ?", (time.time() - OPEN_TOOL_TTL,))
        # First pass: oldest first, keep the numbers and drop the words.
        while total > self.max_bytes:
            rows = self.conn.execute(
                "SELECT id, payload, size FROM outbox WHERE shed = 0 ORDER BY seq LIMIT 64"
            ).fetchall()
            if not rows:
                break
            for rid, payload, size in rows:
                record = json.loads(payload)
                slim = shed_content(record)
                data = _dumps(slim)
                self.conn.execute(
                    "UPDATE outbox SET payload = ?, size = ?, shed = 1 WHERE id = ?", (data, len(data), rid)
                )
                self._bump("outbox_bytes", len(data) - size)
                self._bump("shed")
                total += len(data) - size
                if total <= self.max_bytes:
                    break
        # Still over: the oldest records go whole, counted.
        while total > self.max_bytes:
            row = self.conn.execute("SELECT id, size FROM outbox ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                break
            self.conn.execute("DELETE FROM outbox WHERE id = ?", (row[0],))
            self._bump("outbox_bytes", -row[1])
            self._bump("dropped")
            total -= row[1]

    # --- shipping ----------------------------------------------------------------------------

    def next_batch(self, *, max_items: int = MAX_BATCH_ITEMS, max_bytes: int = 4 * 1024**2) -> list[Item]:
        """The oldest queued records of one kind, up to ``max_items`` and ``max_bytes``.

        A single record bigger than ``max_bytes`` still comes alone: it can only be sent
        alone, and Opik may accept it.
        """
        first = self.conn.execute("SELECT kind FROM outbox ORDER BY seq LIMIT 1").fetchone()
        if first is None:
            return []
        items: list[Item] = []
        size = 0
        cursor = self.conn.execute(
            "SELECT id, kind, seq, payload FROM outbox WHERE kind = ? ORDER BY seq LIMIT ?",
            (first[0], max_items),
        )
        for rid, kind, seq, payload in cursor:
            if items and size + len(payload) > max_bytes:
                break
            items.append(Item(rid, kind, seq, bytes(payload)))
            size += len(payload)
        return items

    def ack(self, items: list[Item]) -> int:
        """Remove what Opik accepted, unless a newer version was queued meanwhile."""
        with transaction(self.conn):
            freed = 0
            for item in items:
                cur = self.conn.execute(
                    "DELETE FROM outbox WHERE id = ? AND seq = ? RETURNING size", (item.id, item.seq)
                ).fetchone()
                if cur is not None:
                    freed += cur[0]
            self._bump("outbox_bytes", -freed)
            self._bump("shipped", len(items))
        return len(items)

    def reject(self, item: Item, *, status: int | None, reason: str) -> None:
        """Set a record aside for good: Opik refused it and will refuse it again."""
        with transaction(self.conn):
            cur = self.conn.execute("DELETE FROM outbox WHERE id = ? RETURNING size", (item.id,)).fetchone()
            if cur is not None:
                self._bump("outbox_bytes", -cur[0])
            self.conn.execute(
                "INSERT OR REPLACE INTO outbox_rejected (id, kind, payload, status, reason, rejected_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (item.id, item.kind, item.payload, status, reason[:2000], time.time()),
            )
            self._bump("rejected")

    def stats(self) -> dict[str, Any]:
        depth = self.conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
        last = self.conn.execute(
            "SELECT id, status, reason, rejected_at FROM outbox_rejected ORDER BY rejected_at DESC LIMIT 1"
        ).fetchone()
        return {
            "queue_depth": int(depth),
            "outbox_bytes": self.counter("outbox_bytes"),
            "shipped": self.counter("shipped"),
            "rejected": self.counter("rejected"),
            "last_rejection": None
            if last is None
            else {"id": last[0], "status": last[1], "reason": last[2], "at": last[3]},
            "shed": self.counter("shed"),
            "dropped": self.counter("dropped"),
            "disabled": self.counter(f"marked.{DISABLED}"),
            "sampled_out": self.counter(f"marked.{SAMPLED_OUT}"),
        }

    def unmarked_since(self, since: float, limit: int = 10_000) -> list[str]:
        """Stored LLM calls since ``since`` that were never turned into records, oldest first."""
        rows = self.conn.execute(
            """
            SELECT e.id FROM exchanges e LEFT JOIN ship_marks m ON m.exchange_id = e.id
            WHERE e.kind = 'messages' AND e.started_at >= ? AND m.exchange_id IS NULL
            ORDER BY e.started_at, e.id LIMIT ?
            """,
            (since, limit),
        ).fetchall()
        return [r[0] for r in rows]


def shed_content(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` without its content, marked ``cc.shed``; usage, cost and counts stay."""
    out = dict(record)
    before = len(_dumps(record))
    out.pop("input", None)
    out.pop("output", None)
    meta = out.get("metadata")
    meta = dict(meta) if isinstance(meta, dict) else {}
    meta = json.loads(_dumps(meta))  # a deep copy that redact_metadata may edit
    redact_metadata(meta)
    cc = meta.setdefault("cc", {})
    cc["shed"] = {"reason": "outbox full", "bytes_before": before}
    out["metadata"] = meta
    return out
