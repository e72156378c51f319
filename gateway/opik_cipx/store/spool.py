"""The local spool: every captured Exchange, committed to SQLite in WAL mode.

It is the embedded default that the shipper, the viewer, ``stats``, ``status``
and ``explain`` read back. :class:`Spool` is synchronous and is handed its
connection; :class:`AsyncSpool` runs it on one dedicated thread so the event
loop never waits on SQLite.

Request bodies are stored as content-defined chunks (``chunks.py``), each once, by
SHA-256, zlib-compressed, with a reference count; response bodies are one blob
each through the same table, so identical responses are also kept once.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from ..model import CallKind, Cost, Exchange, Outcome, Usage
from . import bodies
from .chunks import MAX_CHUNK, MIN_CHUNK, SLICE, chunk_bounds
from .errors import BodyPruned, SpoolError
from .migrations import migrate, transaction

T = TypeVar("T")

__all__ = ["MAX_CHUNK", "MIN_CHUNK", "SLICE", "AsyncSpool", "BodyPruned", "CallRow", "Spool", "SpoolError",
           "chunk_bounds", "connect"]

WAL_LIMIT_BYTES = 4 * 1024 * 1024


@dataclass(slots=True)
class CallRow:
    """One exchange without its bodies or headers: what listings and stats read."""

    id: str
    started_at: float
    kind: str
    method: str
    path: str
    status: int | None
    outcome: str
    session_id: str | None
    agent_id: str | None
    model: str | None
    stop_reason: str | None
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    cost_usd: float | None
    ttfb_ms: float | None
    ttft_ms: float | None
    duration_ms: float | None
    request_bytes: int
    response_bytes: int


# CallRow's field names are the column names, so a row maps onto it positionally.
_CALL_COLUMNS = tuple(f.name for f in fields(CallRow))
_DETAIL_COLUMNS = (
    "streamed",
    "response_encoding",
    "error",
    "request_headers",
    "response_headers",
    "usage",
    "cost",
    "request_body_size",
    "request_list",
    "response_body_size",
    "response_hash",
)
_ALL_COLUMNS = _CALL_COLUMNS + _DETAIL_COLUMNS
_SELECT_CALLS = f"SELECT {', '.join(_CALL_COLUMNS)} FROM exchanges"
_SELECT_ALL = f"SELECT {', '.join(_ALL_COLUMNS)}, body_pruned_at FROM exchanges"
_UPSERT = (
    f"INSERT INTO exchanges ({', '.join(_ALL_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _ALL_COLUMNS)}) "
    # An update in place, not INSERT OR REPLACE: REPLACE deletes the old row first, which
    # would cascade to any later table that points at exchanges(id).
    # Stored again with its bodies, a call is no longer pruned.
    f"ON CONFLICT(id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in _ALL_COLUMNS[1:])}, body_pruned_at = NULL"
)
_NEWEST_FIRST = "ORDER BY started_at DESC, id DESC"


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if need be) the spool database at ``path``.

    Missing parent directories are made private (0700): the spool holds prompts.
    WAL lets readers (viewer, ``stats``) run beside the writer; ``synchronous=NORMAL``
    is durable across an application crash, and only an OS crash can lose the last
    commits. The connection is in autocommit mode; writers open transactions
    explicitly. ``check_same_thread=False`` so it can be built on one thread and used
    on the spool's worker.
    """
    path = Path(path)
    missing: list[Path] = []
    parent = path.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)
    if not path.parent.is_dir():
        # SQLite would only say "unable to open database file".
        raise NotADirectoryError(f"cannot create the spool: {path.parent} is not a directory")
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"could not put {path} in WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA foreign_keys=ON")
        # A WAL file otherwise stays at its high-water mark (one burst of 1 MB calls leaves tens
        # of MB beside a spool of a few): cut it back when a checkpoint resets it.
        conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
    except BaseException:
        conn.close()
        raise
    return conn


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _compact(obj: Any) -> str:
    """A dataclass as JSON without the fields left at their defaults (``_restore`` puts them
    back): most of a usage or cost is zeros and Nones, and it is stored once per call."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.default is not MISSING and value == f.default:
            continue
        if f.default_factory is not MISSING and value == f.default_factory():
            continue
        out[f.name] = value
    return _json(out)


def _restore(cls: type[T], text: str | None) -> T | None:
    if text is None:
        return None
    data = json.loads(text)
    # Keys a newer or older version wrote that this dataclass lacks are dropped, not fatal.
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in known})


class Spool:
    """The synchronous store. Not thread-safe: use it from one thread (see AsyncSpool)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        migrate(conn)
        self._recent = bodies.Recent()  # each session's last stored body, to splice the next from

    # --- writing -----------------------------------------------------------------------------

    def add(self, ex: Exchange) -> None:
        """Store ``ex`` in one transaction. Adding the same id again replaces it.

        The request body is spliced from the previous call of its session when this process
        stored that call and it is still stored as it was (``bodies.py``). New references are
        counted before the old version's are released, so a chunk both versions share never
        drops to zero in between.
        """
        key = (ex.session_id, ex.agent_id) if ex.session_id else None
        usage = ex.usage
        with transaction(self.conn):
            old = self.conn.execute(
                "SELECT request_list, response_hash FROM exchanges WHERE id = ?", (ex.id,)
            ).fetchone()
            last = self._recent.get(key) if key is not None else None
            if last is not None and not self._still_stored(last):
                last = None
            list_id, after = bodies.store_request(
                self.conn, ex.id, ex.request_body, last, root=last is not None and last.exchange_id == ex.id
            )
            response_hash = bodies.retain_hash(self.conn, ex.response_body) if ex.response_body else None
            row = (
                ex.id,
                ex.started_at,
                str(ex.kind),
                ex.method,
                ex.path,
                ex.status,
                str(ex.outcome),
                ex.session_id,
                ex.agent_id,
                ex.model,
                ex.stop_reason,
                usage.input_tokens if usage else 0,
                usage.output_tokens if usage else 0,
                usage.cache_creation_input_tokens if usage else 0,
                usage.cache_read_input_tokens if usage else 0,
                ex.cost.total_usd if ex.cost else None,
                ex.ttfb_ms,
                ex.ttft_ms,
                ex.duration_ms,
                ex.request_bytes,
                ex.response_bytes,
                int(ex.streamed),
                ex.response_encoding,
                ex.error,
                _json(ex.request_headers),
                _json(ex.response_headers),
                _compact(usage) if usage else None,
                _compact(ex.cost) if ex.cost else None,
                len(ex.request_body),
                list_id,
                len(ex.response_body),
                response_hash,
            )
            self.conn.execute(_UPSERT, row)
            if old is not None:
                if old[0] is not None:
                    bodies.release_list(self.conn, old[0])
                if old[1] is not None:
                    bodies.release_hash(self.conn, old[1])
        if key is not None and after is not None:
            self._recent.put(key, after)

    def _still_stored(self, last: bodies.Last) -> bool:
        """Whether the list ``last`` describes is still this call's, as it was written: a
        transaction rolled back since (and a list id reused) is caught by the list's nonce."""
        row = self.conn.execute(
            "SELECT l.nonce FROM exchanges e JOIN chunk_lists l ON l.id = e.request_list WHERE e.id = ?",
            (last.exchange_id,),
        ).fetchone()
        return row is not None and row[0] == last.nonce

    def existing_ids(self, ids: list[str]) -> set[str]:
        """Which of these exchange ids are stored (the journal replay skips those)."""
        found: set[str] = set()
        for batch in bodies.batches(ids):
            marks = ", ".join("?" for _ in batch)
            found.update(r[0] for r in self.conn.execute(f"SELECT id FROM exchanges WHERE id IN ({marks})", batch))
        return found

    # --- reading -----------------------------------------------------------------------------

    def _exchange(self, row: tuple[Any, ...]) -> Exchange:
        values = dict(zip(_ALL_COLUMNS, row[:-1], strict=True))
        if row[-1] is not None:
            raise BodyPruned(values["id"], row[-1])
        list_id: int | None = values["request_list"]
        request_body = bodies.load(self.conn, bodies.resolve(self.conn, list_id)) if list_id is not None else b""
        response_hash: bytes | None = values["response_hash"]
        response_body = b""
        if response_hash is not None:
            found = self.conn.execute("SELECT data FROM blobs WHERE hash = ?", (response_hash,)).fetchone()
            if found is None:
                raise SpoolError(f"exchange {values['id']}: the response body is missing from the spool")
            response_body = zlib.decompress(found[0])
        if len(request_body) != values["request_body_size"] or len(response_body) != values[
            "response_body_size"
        ]:
            raise SpoolError(f"exchange {values['id']}: reassembled body has the wrong size")
        return Exchange(
            id=values["id"],
            started_at=values["started_at"],
            method=values["method"],
            path=values["path"],
            kind=CallKind(values["kind"]),
            request_headers=json.loads(values["request_headers"]),
            request_body=request_body,
            status=values["status"],
            response_headers=json.loads(values["response_headers"]),
            response_body=response_body,
            response_encoding=values["response_encoding"],
            streamed=bool(values["streamed"]),
            ttfb_ms=values["ttfb_ms"],
            ttft_ms=values["ttft_ms"],
            duration_ms=values["duration_ms"],
            session_id=values["session_id"],
            agent_id=values["agent_id"],
            model=values["model"],
            stop_reason=values["stop_reason"],
            usage=_restore(Usage, values["usage"]),
            cost=_restore(Cost, values["cost"]),
            outcome=Outcome(values["outcome"]),
            error=values["error"],
            request_bytes=values["request_bytes"],
            response_bytes=values["response_bytes"],
        )

    def get(self, exchange_id: str) -> Exchange | None:
        """The full Exchange, bodies reassembled byte for byte; None if unknown (BodyPruned if pruned)."""
        row = self.conn.execute(f"{_SELECT_ALL} WHERE id = ?", (exchange_id,)).fetchone()
        return None if row is None else self._exchange(row)

    def calls(
        self,
        *,
        limit: int = 50,
        before: tuple[float, str] | None = None,
        session_id: str | None = None,
        model: str | None = None,
        kind: str | None = None,
        since: float | None = None,
    ) -> list[CallRow]:
        """Listing rows, newest first.

        Page with ``before=(row.started_at, row.id)`` of the last row seen: the next page
        starts strictly after it in (started_at, id) order, so rows with equal timestamps
        are neither skipped nor repeated, and each page is an index seek, not an OFFSET scan.
        """
        where: list[str] = []
        params: list[Any] = []
        if session_id is not None:
            where.append("session_id = ?")
            params.append(session_id)
        if model is not None:
            where.append("model = ?")
            params.append(model)
        if kind is not None:
            where.append("kind = ?")
            params.append(str(kind))
        if since is not None:
            where.append("started_at >= ?")
            params.append(since)
        if before is not None:
            where.append("(started_at, id) < (?, ?)")
            params.extend(before)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        params.append(max(0, limit))
        rows = self.conn.execute(f"{_SELECT_CALLS}{clause} {_NEWEST_FIRST} LIMIT ?", params)
        return [CallRow(*r) for r in rows]

    def last(self, n: int = 1, *, llm_only: bool = True) -> list[Exchange]:
        """The ``n`` newest full Exchanges, newest first; only LLM calls unless told otherwise."""
        clause = " WHERE kind = ?" if llm_only else ""
        params: list[Any] = [str(CallKind.MESSAGES)] if llm_only else []
        params.append(max(0, n))
        rows = self.conn.execute(f"{_SELECT_ALL}{clause} {_NEWEST_FIRST} LIMIT ?", params).fetchall()
        return [self._exchange(r) for r in rows]

    def last_ids(self, n: int = 1, *, llm_only: bool = True) -> list[str]:
        """The ids of the ``n`` newest calls, newest first: what ``last`` would load, without
        loading it, so a reader can fetch (and let go of) one call at a time."""
        clause = " WHERE kind = ?" if llm_only else ""
        params: list[Any] = [str(CallKind.MESSAGES)] if llm_only else []
        params.append(max(0, n))
        rows = self.conn.execute(f"SELECT id FROM exchanges{clause} {_NEWEST_FIRST} LIMIT ?", params).fetchall()
        return [row[0] for row in rows]

    def counters(self) -> dict[str, int]:
        """Totals for ``status`` and ``stats``.

        Keys: ``calls``; ``kind.<kind>`` and ``outcome.<outcome>`` for every CallKind and
        Outcome (zero when none); ``unknown_cost`` (LLM calls with usage but no price);
        ``request_bytes`` / ``response_bytes`` (wire sizes); ``body_bytes`` (what storing
        every body whole would take); ``stored_chunks`` / ``stored_bytes`` (the unique,
        compressed chunks actually kept).
        """
        out: dict[str, int] = {"calls": 0}
        out.update({f"kind.{k}": 0 for k in CallKind})
        out.update({f"outcome.{o}": 0 for o in Outcome})
        totals = Counter[str]()
        for kind, outcome, n, unknown, req, resp, body in self.conn.execute(
            """
            SELECT kind, outcome, count(*),
                   total(kind = 'messages' AND usage IS NOT NULL AND cost_usd IS NULL),
                   total(request_bytes), total(response_bytes),
                   total(request_body_size + response_body_size)
            FROM exchanges GROUP BY kind, outcome
            """
        ):
            out["calls"] += n
            out[f"kind.{kind}"] = out.get(f"kind.{kind}", 0) + n
            out[f"outcome.{outcome}"] = out.get(f"outcome.{outcome}", 0) + n
            totals.update(unknown_cost=int(unknown), request_bytes=int(req), response_bytes=int(resp))
            totals.update(body_bytes=int(body))
        for key in ("unknown_cost", "request_bytes", "response_bytes", "body_bytes"):
            out[key] = totals[key]
        chunks, stored = self.conn.execute("SELECT count(*), total(length(data)) FROM blobs").fetchone()
        out["stored_chunks"] = chunks
        out["stored_bytes"] = int(stored)
        return out

    def size_bytes(self) -> int:
        """Bytes on disk: the database file plus its WAL (0 for an in-memory database)."""
        total = 0
        for _, name, filename in self.conn.execute("PRAGMA database_list"):
            if name != "main" or not filename:
                continue
            for candidate in (filename, f"{filename}-wal"):
                try:
                    st = os.stat(candidate)
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
        return total

    def close(self) -> None:
        self.conn.close()


class AsyncSpool:
    """Runs every Spool method on one dedicated thread so the event loop never blocks on SQLite.

    One worker, so calls run one at a time in the order they were made, and a close
    runs after every call queued before it. A caller that is cancelled while waiting
    does not cancel its call: an ``add`` that has been handed over still commits.
    """

    def __init__(self, spool: Spool, *, executor: ThreadPoolExecutor | None = None) -> None:
        self._spool = spool
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="cipx-spool")
        self._closed = False

    @classmethod
    async def open(cls, path: Path) -> AsyncSpool:
        """Connect, migrate and build the Spool on the worker thread itself."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cipx-spool")
        loop = asyncio.get_running_loop()
        try:
            spool = await loop.run_in_executor(executor, lambda: Spool(connect(path)))
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(spool, executor=executor)

    async def run(self, fn: Callable[[Spool], T]) -> T:
        """Run ``fn(spool)`` on the spool's thread: the way for other stores to share it."""
        if self._closed:
            raise RuntimeError("the spool is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, self._spool)

    async def add(self, ex: Exchange) -> None:
        await self.run(lambda s: s.add(ex))

    async def get(self, exchange_id: str) -> Exchange | None:
        return await self.run(lambda s: s.get(exchange_id))

    async def calls(self, **filters: Any) -> list[CallRow]:
        return await self.run(lambda s: s.calls(**filters))

    async def last(self, n: int = 1, *, llm_only: bool = True) -> list[Exchange]:
        return await self.run(lambda s: s.last(n, llm_only=llm_only))

    async def counters(self) -> dict[str, int]:
        return await self.run(Spool.counters)

    async def size_bytes(self) -> int:
        return await self.run(Spool.size_bytes)

    async def close(self) -> None:
        """Close the connection after queued calls finish; a second close does nothing."""
        if self._closed:
            return
        # Marked first so a call made while the close is queued is refused, not run on a
        # closed connection.
        self._closed = True
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, Spool.close, self._spool)
        finally:
            # The worker is idle now; not joining it keeps the loop from waiting on a thread.
            self._executor.shutdown(wait=False)
