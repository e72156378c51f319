"""Retention: old calls lose their raw bodies, never their totals, and the file shrinks.

A pruned call keeps its ``exchanges`` row (tokens, cost, model, outcome, timings),
its attribution totals and items, so ``stats`` and ``insights`` count it as
before; what goes is its request chunks and response blob (released by reference
count, so a chunk another call still uses stays) and with them ``explain``'s
regions. Two rules pick the calls, oldest first:

- age: ``CIPX_RETENTION_DAYS`` (0: keep bodies forever);
- size: ``CIPX_SPOOL_MAX_MB``, a cap on the database's live pages (0: no cap).

A call Opik has not yet received is never pruned, whatever the rules say: its
records wait in the outbox, or it has no ship mark yet and the shipper's recovery
scan still needs its body. The selection (:func:`plan`) is
pure and takes the clock as an argument; :func:`prune` does the I/O.

The first run switches the file to incremental auto-vacuum (a one-off ``VACUUM``:
SQLite cannot change the mode of a file that has tables otherwise); every run then
gives the freed pages back to the file system, so the file actually shrinks.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import bodies
from .migrations import transaction

log = logging.getLogger(__name__)

DAY = 86400.0
_BATCH = 64  # calls pruned per transaction: short, so capture never waits long on the lock
_CAP_BATCH = 16  # under the cap, the size is measured again after this many: stop close to it
# What `stats --by project` reads from a session's first call (report/stats.py keeps the
# same pattern and limit): that much of its request stays, so a pruned session keeps its project.
_CWD = re.compile(rb"(?:Primary w|W)orking directory: (/[^\\\"\r\n]*)")
_CWD_SCAN_LIMIT = 512 * 1024


@dataclass(frozen=True, slots=True)
class Policy:
    days: int = 90  # bodies older than this are pruned; 0 keeps them forever
    max_bytes: int = 0  # the database's live pages are kept under this; 0 means no cap

    @property
    def enabled(self) -> bool:
        return self.days > 0 or self.max_bytes > 0


@dataclass(frozen=True, slots=True)
class Candidate:
    """A stored call that still has its bodies."""

    id: str
    started_at: float
    unshipped: bool  # Opik may still need its body: never pruned


@dataclass(slots=True)
class Plan:
    by_age: list[Candidate]  # past the retention age: pruned in any case
    by_size: list[Candidate]  # the rest, oldest first: pruned while the spool is over its cap
    kept_unshipped: int  # past the age but not yet shipped: kept
    unshipped: int  # every call Opik may still need (the cap cannot take them either)


def cutoff(now: float, days: int) -> float | None:
    """Bodies of calls that started before this moment are past retention; None: no age limit."""
    return now - days * DAY if days > 0 else None


def plan(calls: Sequence[Candidate], now: float, policy: Policy) -> Plan:
    """Which calls lose their bodies, in the order they should: pure, the clock passed in."""
    limit = cutoff(now, policy.days)
    ordered = sorted(calls, key=lambda c: (c.started_at, c.id))
    by_age = [c for c in ordered if limit is not None and c.started_at < limit and not c.unshipped]
    aged = {c.id for c in by_age}
    by_size = [c for c in ordered if c.id not in aged and not c.unshipped] if policy.max_bytes > 0 else []
    held = sum(1 for c in ordered if c.unshipped and limit is not None and c.started_at < limit)
    return Plan(by_age, by_size, held, sum(1 for c in ordered if c.unshipped))


def kept_prefix(chunks: Sequence[bytes], limit: int = _CWD_SCAN_LIMIT) -> int:
    """How many leading chunks hold the working directory (0 when none of the first ``limit``
    bytes does): a session's first call keeps those, as ``stats --by project`` reads them."""
    seen = b""
    scanned = 0
    for i, data in enumerate(chunks):
        seen = seen[-256:] + data
        if _CWD.search(seen):
            return i + 1
        scanned += len(data)
        if scanned > limit:
            break
    return 0


# --- the spool side ---------------------------------------------------------------------------


# Opik may still need this call's body (`e` is its exchanges row); see candidates().
_UNSHIPPED = (
    "(EXISTS (SELECT 1 FROM outbox o WHERE o.exchange_id = e.id)"
    " OR (e.kind IN ('messages', 'responses')"
    " AND NOT EXISTS (SELECT 1 FROM ship_marks m WHERE m.exchange_id = e.id)))"
)


def candidates(conn: sqlite3.Connection) -> list[Candidate]:
    """Every call that still has a body, with whether Opik may still need it.

    Unshipped: records of it wait in the outbox (a destination configured or not: they ship
    once one is), or it is an LLM call with no ship mark yet (the span stage marks every LLM
    call it handled, shipped or not, in the call's own transaction, even with no destination:
    only a call whose stage failed lacks one, and the shipper's recovery scan derives it from
    the body).
    """
    rows = conn.execute(
        f"""
        SELECT e.id, e.started_at, {_UNSHIPPED}
        FROM exchanges e
        WHERE e.body_pruned_at IS NULL AND (e.request_list IS NOT NULL OR e.response_hash IS NOT NULL)
        ORDER BY e.started_at, e.id
        """
    ).fetchall()
    return [Candidate(i, t, bool(u)) for i, t, u in rows]


def _first_calls(conn: sqlite3.Connection, ids: list[str]) -> set[str]:
    """Those of ``ids`` that are the first call with a body of their session (as stats picks it)."""
    found: set[str] = set()
    for i in range(0, len(ids), 500):
        batch = ids[i : i + 500]
        marks = ", ".join("?" for _ in batch)
        found.update(
            r[0]
            for r in conn.execute(
                f"""
                SELECT e.id FROM exchanges e WHERE e.id IN ({marks}) AND e.session_id IS NOT NULL
                AND NOT EXISTS (SELECT 1 FROM exchanges f WHERE f.session_id = e.session_id
                                AND f.request_body_size > 0 AND (f.started_at, f.id) < (e.started_at, e.id))
                """,
                batch,
            )
        )
    return found


def _prune_batch(conn: sqlite3.Connection, ids: list[str], now: float) -> int:
    """Drop these calls' bodies in one transaction; the number pruned."""
    firsts = _first_calls(conn, ids)
    done = 0
    with transaction(conn):
        for exchange_id in ids:
            # Checked again under the write lock: a re-ship may have queued records for it since.
            row = conn.execute(
                f"SELECT request_list, response_hash FROM exchanges e WHERE id = ? AND body_pruned_at IS NULL"
                f" AND NOT ({_UNSHIPPED})",
                (exchange_id,),
            ).fetchone()
            if row is None:
                continue
            list_id, response_hash = row
            chunk_ids = bodies.resolve(conn, list_id) if list_id is not None else []
            keep = _project_prefix(conn, chunk_ids) if exchange_id in firsts else 0
            # The kept prefix (if any) is listed afresh, so the call holds exactly what it still
            # spells; its old list goes, and with it every chunk no other list holds.
            kept_list: int | None = None
            if keep:
                bodies.retain_ids(conn, chunk_ids[:keep])
                kept_list = bodies.new_list(conn, chunk_ids[:keep])[0]
            conn.execute(
                "UPDATE exchanges SET request_list = ?, response_hash = NULL, body_pruned_at = ? WHERE id = ?",
                (kept_list, now, exchange_id),
            )
            if list_id is not None:
                bodies.release_list(conn, list_id)
            if response_hash is not None:
                bodies.release_hash(conn, response_hash)
            done += 1
    return done


def _project_prefix(conn: sqlite3.Connection, ids: list[int]) -> int:
    chunks: list[bytes] = []
    scanned = 0
    for chunk_id in ids:
        row = conn.execute("SELECT data FROM blobs WHERE rowid = ?", (chunk_id,)).fetchone()
        if row is None:
            break
        chunks.append(zlib.decompress(row[0]))
        scanned += len(chunks[-1])
        if scanned > _CWD_SCAN_LIMIT:
            break
    return kept_prefix(chunks)


def live_bytes(conn: sqlite3.Connection) -> int:
    """What the database holds, free pages not counted: what the file shrinks to after a vacuum."""
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return int(page * (pages - free))


def file_bytes(path: Path) -> int:
    """The database file and its WAL, as they are on disk now."""
    total = 0
    for candidate in (path, Path(f"{path}-wal")):
        try:
            total += candidate.stat().st_size
        except FileNotFoundError:
            pass
    return total


def ensure_incremental(conn: sqlite3.Connection) -> bool:
    """Put the file in incremental auto-vacuum mode; True if it had to be rewritten to get there."""
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
        return False
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("VACUUM")  # the one-off rewrite that makes the mode take effect on an existing file
    return True


def shrink(conn: sqlite3.Connection) -> None:
    """Give free pages back to the file system and fold the WAL into the file."""
    # executescript steps the pragma to completion; execute() would free one page per step.
    conn.executescript("PRAGMA incremental_vacuum;")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


@dataclass(slots=True)
class PruneResult:
    pruned: int = 0
    by_age: int = 0
    by_size: int = 0
    kept_unshipped: int = 0
    over_cap: bool = False  # still over the cap: only unshipped calls (or totals) are left
    vacuumed: bool = False  # this run switched the file to incremental vacuum
    bytes_before: int = 0  # database + WAL on disk
    bytes_after: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def prune(
    conn: sqlite3.Connection,
    policy: Policy,
    now: float,
    *,
    path: Path | None = None,
    stop: threading.Event | None = None,
) -> PruneResult:
    """One retention run over the spool on ``conn`` (its own connection, in autocommit mode)."""
    started = time.perf_counter()
    result = PruneResult()
    if path is not None:
        result.bytes_before = file_bytes(path)
    if not policy.enabled:
        return result
    result.vacuumed = ensure_incremental(conn)
    chosen = plan(candidates(conn), now, policy)
    result.kept_unshipped = chosen.kept_unshipped
    for i in range(0, len(chosen.by_age), _BATCH):
        if stop is not None and stop.is_set():
            break
        result.by_age += _prune_batch(conn, [c.id for c in chosen.by_age[i : i + _BATCH]], now)
    if policy.max_bytes > 0:
        spare = iter(chosen.by_size)
        while live_bytes(conn) > policy.max_bytes and not (stop is not None and stop.is_set()):
            batch = [c.id for _, c in zip(range(_CAP_BATCH), spare, strict=False)]
            if not batch:
                result.over_cap = True
                result.kept_unshipped = chosen.unshipped  # what stands between the spool and its cap
                result.notes.append(f"over the cap with nothing left to prune: {chosen.unshipped} calls not "
                                    "yet shipped to Opik keep their bodies, and every call keeps its totals")
                break
            result.by_size += _prune_batch(conn, batch, now)
    result.pruned = result.by_age + result.by_size
    if result.pruned or result.vacuumed:
        shrink(conn)
    if path is not None:
        result.bytes_after = file_bytes(path)
    result.seconds = round(time.perf_counter() - started, 3)
    with transaction(conn):
        conn.execute(
            "INSERT INTO retention_runs (at, pruned, freed_bytes, kept_unshipped, over_cap) VALUES (?, ?, ?, ?, ?)",
            (now, result.pruned, max(0, result.bytes_before - result.bytes_after), result.kept_unshipped,
             int(result.over_cap)),
        )
        # Only the recent history is worth keeping: status shows the last run.
        conn.execute("DELETE FROM retention_runs WHERE rowid <= (SELECT max(rowid) FROM retention_runs) - 100")
    return result


def footprint(conn: sqlite3.Connection) -> dict[str, Any]:
    """What ``status`` shows of retention: the oldest kept body, how many were pruned, the last run."""
    oldest, pruned = conn.execute(
        "SELECT min(CASE WHEN body_pruned_at IS NULL AND (request_list IS NOT NULL OR response_hash IS NOT NULL)"
        " THEN started_at END), count(body_pruned_at) FROM exchanges"
    ).fetchone()
    last = conn.execute(
        "SELECT at, pruned, freed_bytes, kept_unshipped, over_cap FROM retention_runs ORDER BY rowid DESC LIMIT 1"
    ).fetchone()
    return {
        "oldest_body_at": oldest,
        "pruned_calls": int(pruned),
        "last_prune": None if last is None else {
            "at": last[0], "pruned": last[1], "freed_bytes": last[2], "kept_unshipped": last[3],
            "over_cap": bool(last[4]),
        },
    }


def footprint_file(path: Path) -> dict[str, Any] | None:
    """:func:`footprint` and the size on disk, read-only, for ``status`` while the gateway is down;
    None when there is no spool (or it predates retention: nothing was pruned from it)."""
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=2.0)
        try:
            return {"bytes": file_bytes(path), **footprint(conn)}
        finally:
            conn.close()
    except sqlite3.Error:
        return None


def prune_file(path: Path, policy: Policy, now: float, stop: threading.Event | None = None) -> PruneResult:
    """A run on a connection of its own, so the gateway's spool thread is never held up by it."""
    from .spool import Spool, connect

    spool = Spool(connect(path))  # migrates, so a spool older than m007_retention works too
    try:
        return prune(spool.conn, policy, now, path=path, stop=stop)
    finally:
        spool.close()


class RetentionTask:
    """The gateway's background pruning: soon after start, then every ``interval`` seconds,
    each time waiting for a lull in forwarding so capture and the relay go first."""

    def __init__(
        self,
        path: Path,
        policy: Policy,
        *,
        busy: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.time,
        first_delay: float = 30.0,
        interval: float = 600.0,
    ) -> None:
        self.path = path
        self.policy = policy
        self._busy = busy
        self._clock = clock
        self._first_delay = first_delay
        self._interval = interval
        self._stop = threading.Event()
        self.last: PruneResult | None = None
        self.runs = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(self._first_delay)
        try:
            while True:
                while self._busy():  # noqa: ASYNC110 - the proxy's busy state is polled, not signalled
                    await asyncio.sleep(1.0)
                try:
                    self.last = await loop.run_in_executor(
                        None, prune_file, self.path, self.policy, self._clock(), self._stop
                    )
                    self.runs += 1
                    if self.last.pruned or self.last.over_cap:
                        log.info("retention: %s", self.last.to_json())
                except sqlite3.Error as exc:  # a busy or broken spool: try again next round
                    log.warning("retention run failed: %s", exc)
                await asyncio.sleep(self._interval)
        finally:
            self._stop.set()  # a run still in its thread stops after its current batch

