"""Request bodies on disk: content-defined chunks, each stored once, listed per call by splicing.

A chunk (``blobs``) is kept once by its SHA-256, zlib-compressed, and named in lists by its
rowid. A call's list of chunks (``chunk_lists``) is either a root that names every chunk, or
a splice of the list of the call before it in the same session: that list's first ``head`` and
last ``tail`` entries with the call's own new chunks between them. Claude Code resends the
whole conversation every turn, so storing a call then costs its new bytes: the bytes it shares
with the previous call are neither chunked, hashed nor counted again, and its list is a few
entries, not one per chunk of a megabyte.

Reference counts: a blob counts its occurrences in lists' own entries (and as a response
body); a list counts the exchanges that use it and the lists spliced from it. A reader walks
at most :data:`MAX_DEPTH` splices back to a root.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import sys
import time
import zlib
from array import array
from collections import Counter
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from .chunks import chunk_bounds, splice
from .errors import SpoolError

ZLIB_LEVEL = 1  # level 6 is half again smaller on JSON but twice as slow; the hot path wins
MAX_DEPTH = 32  # splices between a list and its root: bounds a read to that many rows
_SQL_BATCH = 500  # host parameters per IN (...), far below SQLite's limit

T = TypeVar("T")


def pack(ids: Iterable[int]) -> bytes:
    """Blob ids as little-endian 64-bit integers (the same file reads back on any machine)."""
    out = array("q", ids)
    if sys.byteorder == "big":
        out.byteswap()
    return out.tobytes()


def unpack(packed: bytes) -> list[int]:
    out = array("q")
    out.frombytes(packed)
    if sys.byteorder == "big":
        out.byteswap()
    return out.tolist()


@dataclass(slots=True)
class Last:
    """The last body stored for one (session, agent): what the next call is spliced from."""

    exchange_id: str
    list_id: int
    nonce: int  # the list row's, so a list id reused after a rollback is not taken for this one
    depth: int
    body: bytes
    bounds: list[tuple[int, int]]
    ids: list[int]
    used: float = field(default=0.0)


class Recent:
    """The last stored body per (session, agent), a few at a time, dropped once idle."""

    def __init__(self, max_entries: int = 8, idle_seconds: float = 600.0) -> None:
        self.max_entries = max_entries
        self.idle_seconds = idle_seconds
        self.entries: dict[Hashable, Last] = {}

    def get(self, key: Hashable) -> Last | None:
        horizon = time.monotonic() - self.idle_seconds
        for stale in [k for k, e in self.entries.items() if e.used < horizon]:
            del self.entries[stale]
        return self.entries.get(key)

    def put(self, key: Hashable, last: Last) -> None:
        last.used = time.monotonic()
        self.entries.pop(key, None)
        self.entries[key] = last
        while len(self.entries) > self.max_entries:
            self.entries.pop(next(iter(self.entries)))



def batches(items: list[T]) -> Iterable[list[T]]:
    """``items`` in slices small enough for one ``IN (...)``."""
    for i in range(0, len(items), _SQL_BATCH):
        yield items[i : i + _SQL_BATCH]


def retain_blobs(conn: sqlite3.Connection, pieces: dict[bytes, memoryview], refs: Counter[bytes]) -> dict[bytes, int]:
    """Count ``refs`` more references to these chunks, storing the ones never seen; their rowids."""
    ids: dict[bytes, int] = {}
    digests = list(refs)
    for batch in batches(digests):
        marks = ", ".join("?" for _ in batch)
        ids.update(conn.execute(f"SELECT hash, rowid FROM blobs WHERE hash IN ({marks})", batch).fetchall())
    conn.executemany("UPDATE blobs SET refs = refs + ? WHERE rowid = ?", ((refs[h], i) for h, i in ids.items()))
    # Only chunks never seen before are compressed: in a long conversation, the new turn.
    for digest in digests:
        if digest not in ids:
            piece = pieces[digest]
            row = conn.execute(
                "INSERT INTO blobs (hash, data, size, refs) VALUES (?, ?, ?, ?) RETURNING rowid",
                (digest, zlib.compress(piece, ZLIB_LEVEL), len(piece), refs[digest]),
            ).fetchone()
            ids[digest] = row[0]
    return ids


def retain_ids(conn: sqlite3.Connection, ids: list[int]) -> None:
    """One more reference per occurrence of these stored chunks (a new list naming them)."""
    conn.executemany("UPDATE blobs SET refs = refs + ? WHERE rowid = ?", ((n, i) for i, n in Counter(ids).items()))


def release_blobs(conn: sqlite3.Connection, refs: Counter[int]) -> None:
    """Drop ``refs`` references (by rowid); a chunk nothing refers to any more is deleted."""
    if not refs:
        return
    conn.executemany("UPDATE blobs SET refs = refs - ? WHERE rowid = ?", ((n, i) for i, n in refs.items()))
    conn.executemany("DELETE FROM blobs WHERE rowid = ? AND refs <= 0", ((i,) for i in refs))


def release_hash(conn: sqlite3.Connection, digest: bytes) -> None:
    """Drop one reference to a blob named by its hash (a response body)."""
    conn.execute("UPDATE blobs SET refs = refs - 1 WHERE hash = ?", (digest,))
    conn.execute("DELETE FROM blobs WHERE hash = ? AND refs <= 0", (digest,))


def retain_hash(conn: sqlite3.Connection, body: bytes) -> bytes:
    """One more reference to ``body`` as a single blob (response bodies); its hash."""
    digest = hashlib.sha256(body).digest()
    retain_blobs(conn, {digest: memoryview(body)}, Counter({digest: 1}))
    return digest


def new_list(conn: sqlite3.Connection, ids: list[int], *, parent: int | None = None, head: int = 0,
             tail: int = 0, length: int | None = None, depth: int = 0) -> tuple[int, int]:
    """Store a list (a root when ``parent`` is None, else a splice of it) with one reference;
    its id and nonce."""
    nonce = secrets.randbits(62)
    row = conn.execute(
        "INSERT INTO chunk_lists (parent, head, tail, own, length, depth, refs, nonce)"
        " VALUES (?, ?, ?, ?, ?, ?, 1, ?) RETURNING id",
        (parent, head, tail, pack(ids), len(ids) if length is None else length, depth, nonce),
    ).fetchone()
    if parent is not None:
        conn.execute("UPDATE chunk_lists SET refs = refs + 1 WHERE id = ?", (parent,))
    return int(row[0]), nonce


def release_list(conn: sqlite3.Connection, list_id: int) -> None:
    """Drop one reference to a list; one nothing refers to is deleted, with its hold on its chunks
    and on the list it was spliced from."""
    todo: list[int] = [list_id]
    while todo:
        current = todo.pop()
        row = conn.execute(
            "UPDATE chunk_lists SET refs = refs - 1 WHERE id = ? RETURNING refs, parent, own", (current,)
        ).fetchone()
        if row is None or row[0] > 0:
            continue
        conn.execute("DELETE FROM chunk_lists WHERE id = ?", (current,))
        release_blobs(conn, Counter(unpack(row[2])))
        if row[1] is not None:
            todo.append(row[1])


def resolve(conn: sqlite3.Connection, list_id: int) -> list[int]:
    """Every chunk id of a list, in body order."""
    chain: list[tuple[int, int, bytes]] = []
    current: int | None = list_id
    while current is not None:
        row = conn.execute("SELECT parent, head, tail, own FROM chunk_lists WHERE id = ?", (current,)).fetchone()
        if row is None:
            raise SpoolError(f"chunk list {current} is missing from the spool")
        current = row[0]
        chain.append((row[1], row[2], row[3]))
        if len(chain) > MAX_DEPTH + 1:
            raise SpoolError(f"chunk list {list_id} is spliced deeper than {MAX_DEPTH}")
    ids: list[int] = []
    for head, tail, own in reversed(chain):
        ids = ids[:head] + unpack(own) + (ids[len(ids) - tail :] if tail else [])
    return ids


def load(conn: sqlite3.Connection, ids: list[int]) -> bytes:
    """The body these chunk ids spell."""
    wanted = sorted(set(ids))
    data: dict[int, bytes] = {}
    for batch in batches(wanted):
        marks = ", ".join("?" for _ in batch)
        for rowid, blob in conn.execute(f"SELECT rowid, data FROM blobs WHERE rowid IN ({marks})", batch):
            data[rowid] = zlib.decompress(blob)
    if len(data) != len(wanted):
        raise SpoolError(f"{len(wanted) - len(data)} body chunk(s) missing from the spool")
    return b"".join(data[i] for i in ids)


def store_request(
    conn: sqlite3.Connection, exchange_id: str, body: bytes, last: Last | None, *, root: bool = False
) -> tuple[int | None, Last | None]:
    """Store a request body's chunks and list, spliced from ``last`` (the previous call of the
    session, still stored as it was); the list id (None for an empty body) and what the next
    call of the session may splice from. ``root``: reuse what ``last`` knows but list every
    chunk (a call stored again over itself must not hang off the list it replaces)."""
    if not body:
        return None, None
    view = memoryview(body)
    if last is None:
        bounds = chunk_bounds(body)
        ids = _chunk_ids(conn, view, bounds)
        list_id, nonce = new_list(conn, ids)
        return list_id, Last(exchange_id, list_id, nonce, 0, body, bounds, ids)
    plan = splice(last.body, last.bounds, body)
    shift = len(body) - len(last.body)
    middle = chunk_bounds(body, plan.start, plan.end)
    tail = last.bounds[len(last.bounds) - plan.tail :] if plan.tail else []
    bounds = last.bounds[: plan.head] + middle + [(s + shift, e + shift) for s, e in tail]
    own = _chunk_ids(conn, view, middle)
    head_ids = last.ids[: plan.head]
    tail_ids = last.ids[len(last.ids) - plan.tail :] if plan.tail else []
    ids = head_ids + own + tail_ids
    if last.depth < MAX_DEPTH and not root:
        list_id, nonce = new_list(conn, own, parent=last.list_id, head=plan.head, tail=plan.tail,
                                  length=len(ids), depth=last.depth + 1)
        return list_id, Last(exchange_id, list_id, nonce, last.depth + 1, body, bounds, ids)
    # Deep enough: a new root. Its ids are known, so only the kept chunks' counts move.
    retain_ids(conn, head_ids + tail_ids)
    list_id, nonce = new_list(conn, ids)
    return list_id, Last(exchange_id, list_id, nonce, 0, body, bounds, ids)


def _chunk_ids(conn: sqlite3.Connection, view: memoryview, bounds: list[tuple[int, int]]) -> list[int]:
    """Retain one reference per occurrence of these ranges' chunks; their ids in order."""
    order: list[bytes] = []
    pieces: dict[bytes, memoryview] = {}
    for start, end in bounds:
        piece = view[start:end]
        digest = hashlib.sha256(piece).digest()
        pieces.setdefault(digest, piece)
        order.append(digest)
    if not order:
        return []
    ids = retain_blobs(conn, pieces, Counter(order))
    return [ids[d] for d in order]
