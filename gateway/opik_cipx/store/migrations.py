"""Schema migrations for the spool: an append-only list of small functions.

Each migration is a plain function of the connection, registered in order with
:func:`migration` and recorded by name in the ``_migrations`` table once it has
run. Never edit or reorder a released migration: append a new one. Names are
``mNNN_what`` so the table reads as a history.

Every migration runs in its own ``BEGIN IMMEDIATE`` transaction together with
the row that records it, so a crash mid-way leaves either both or neither, and
two processes opening the same spool at once cannot apply one twice.
"""

from __future__ import annotations

import secrets
import sqlite3
import sys
import time
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Migration = Callable[[sqlite3.Connection], None]

MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    """Append ``fn`` to :data:`MIGRATIONS`; definition order is application order."""
    if any(m.__name__ == fn.__name__ for m in MIGRATIONS):
        raise ValueError(f"duplicate migration name {fn.__name__!r}")
    MIGRATIONS.append(fn)
    return fn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, taken up front so a read-then-write never races.

    Works whatever the connection's ``isolation_level``: once ``BEGIN`` has run,
    the sqlite3 module issues no implicit one of its own.
    """
    if conn.in_transaction:
        # Nested inside a caller's transaction (the capture worker commits a whole batch
        # at once): a savepoint keeps this unit all-or-nothing without an early COMMIT.
        conn.execute("SAVEPOINT nested")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK TO nested")
            conn.execute("RELEASE nested")
            raise
        else:
            conn.execute("RELEASE nested")
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


def _ensure_table(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
    )


def applied(conn: sqlite3.Connection) -> list[str]:
    """Names recorded in ``_migrations``, in the order they were applied."""
    _ensure_table(conn)
    return [row[0] for row in conn.execute("SELECT name FROM _migrations ORDER BY rowid")]


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply every pending migration, each in its own transaction; return the names applied."""
    done = set(applied(conn))
    ran: list[str] = []
    for fn in MIGRATIONS:
        if fn.__name__ in done:
            continue
        with transaction(conn):
            # Re-check under the write lock: another process may have won the race.
            if conn.execute("SELECT 1 FROM _migrations WHERE name = ?", (fn.__name__,)).fetchone():
                continue
            fn(conn)
            conn.execute(
                "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (fn.__name__, time.time())
            )
        ran.append(fn.__name__)
    return ran


# --- the migrations, oldest first -------------------------------------------------------------


@migration
def m001_exchanges(conn: sqlite3.Connection) -> None:
    # The listing columns come first so a list query never walks past the JSON columns;
    # bodies live in `blobs`, referenced by hash, so rows stay small at 100,000 calls.
    conn.execute(
        """
        CREATE TABLE exchanges (
            id TEXT NOT NULL UNIQUE,
            started_at REAL NOT NULL,
            kind TEXT NOT NULL,
            method TEXT NOT NULL,
            path TEXT NOT NULL,
            status INTEGER,
            outcome TEXT NOT NULL,
            session_id TEXT,
            agent_id TEXT,
            model TEXT,
            stop_reason TEXT,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            cache_creation_input_tokens INTEGER NOT NULL DEFAULT 0,
            cache_read_input_tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd REAL,
            ttfb_ms REAL,
            ttft_ms REAL,
            duration_ms REAL,
            request_bytes INTEGER NOT NULL DEFAULT 0,
            response_bytes INTEGER NOT NULL DEFAULT 0,
            streamed INTEGER NOT NULL DEFAULT 0,
            response_encoding TEXT,
            error TEXT,
            request_headers TEXT NOT NULL DEFAULT '{}',
            response_headers TEXT NOT NULL DEFAULT '{}',
            usage TEXT,
            cost TEXT,
            request_body_size INTEGER NOT NULL DEFAULT 0,
            request_chunks BLOB NOT NULL DEFAULT x'',
            response_body_size INTEGER NOT NULL DEFAULT 0,
            response_hash BLOB
        )
        """
    )


@migration
def m002_blobs(conn: sqlite3.Connection) -> None:
    # Content-addressed, zlib-compressed body pieces; `refs` counts references from
    # exchanges (with multiplicity) so shedding can drop what nothing points at.
    # A rowid table on purpose: WITHOUT ROWID suits small rows, and these run to 64 KB.
    conn.execute(
        """
        CREATE TABLE blobs (
            hash BLOB PRIMARY KEY,
            data BLOB NOT NULL,
            size INTEGER NOT NULL,
            refs INTEGER NOT NULL DEFAULT 0
        )
        """
    )


@migration
def m003_exchange_indexes(conn: sqlite3.Connection) -> None:
    # Every filtered listing is ordered newest first by (started_at, id), so each filter
    # index ends in those columns and keyset paging walks an index with no sort step.
    conn.execute("CREATE INDEX exchanges_started ON exchanges (started_at, id)")
    conn.execute("CREATE INDEX exchanges_session ON exchanges (session_id, started_at, id)")
    conn.execute("CREATE INDEX exchanges_model ON exchanges (model, started_at, id)")
    conn.execute("CREATE INDEX exchanges_kind ON exchanges (kind, started_at, id)")


@migration
def m004_sessions(conn: sqlite3.Connection) -> None:
    # What the SessionStart hook registered per Claude Code session (cwd, env, git); kept here
    # so a gateway restarted mid-session still resolves markers and identity for it.
    conn.execute(
        """
        CREATE TABLE sessions (
            session_id TEXT PRIMARY KEY,
            cwd TEXT,
            transcript_path TEXT,
            source TEXT,
            env TEXT NOT NULL DEFAULT '{}',
            git_repo TEXT,
            git_branch TEXT,
            registered_at REAL NOT NULL,
            last_seen REAL NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX sessions_last_seen ON sessions (last_seen)")


@migration
def m005_outbox(conn: sqlite3.Connection) -> None:
    # Opik records waiting to ship, keyed by their Opik id so a newer version of the same
    # trace or span replaces the older one in place. `seq` is bumped on every write: the
    # shipper deletes a row after a send only if its seq is still the one it sent, so a
    # version written while a batch was in flight is never lost.
    conn.execute(
        """
        CREATE TABLE outbox (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('trace', 'span')),
            seq INTEGER NOT NULL,
            session_id TEXT,
            exchange_id TEXT,
            payload BLOB NOT NULL,
            size INTEGER NOT NULL,
            shed INTEGER NOT NULL DEFAULT 0,
            cost_usd REAL,
            tokens INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL
        )
        """
    )
    conn.execute("CREATE UNIQUE INDEX outbox_seq ON outbox (seq)")
    # Permanent 4xx answers: kept with the reason, never retried, never silently dropped.
    conn.execute(
        """
        CREATE TABLE outbox_rejected (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            payload BLOB NOT NULL,
            status INTEGER,
            reason TEXT NOT NULL,
            rejected_at REAL NOT NULL
        )
        """
    )
    conn.execute("CREATE TABLE ship_counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    # Per session: the trace id and what its trace has accumulated (span.TraceState as JSON).
    conn.execute("CREATE TABLE ship_sessions (session_key TEXT PRIMARY KEY, state TEXT NOT NULL)")
    # Tool sub-spans waiting for their result from the session's next call.
    conn.execute(
        """
        CREATE TABLE ship_tools (
            tool_use_id TEXT PRIMARY KEY,
            session_key TEXT NOT NULL,
            span TEXT NOT NULL,
            created_at REAL NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX ship_tools_created ON ship_tools (created_at)")
    # Which exchanges have been turned into records (or deliberately not): the recovery
    # scan after a crash derives exactly the stored exchanges that lack a mark.
    conn.execute(
        "CREATE TABLE ship_marks (exchange_id TEXT PRIMARY KEY, state TEXT NOT NULL, at REAL NOT NULL)"
    )


@migration
def m006_attribution(conn: sqlite3.Connection) -> None:
    # One row per attributed call (the call kind and the sizes the session view needs) and
    # one per (side, category, item) so stats group by category or MCP server with SQL alone.
    # Regions are not stored: they are recomputed from the stored body when a viewer asks.
    conn.execute(
        """
        CREATE TABLE attribution (
            exchange_id TEXT PRIMARY KEY,
            call_kind TEXT NOT NULL,
            agent_id TEXT,
            body_bytes INTEGER NOT NULL,
            unattributed_bytes INTEGER NOT NULL,
            messages_bytes INTEGER NOT NULL,
            summary TEXT NOT NULL
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE attribution_items (
            exchange_id TEXT NOT NULL,
            side TEXT NOT NULL,
            category TEXT NOT NULL,
            item TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            tokens INTEGER NOT NULL,
            cost_usd REAL,
            PRIMARY KEY (exchange_id, side, category, item)
        ) WITHOUT ROWID
        """
    )
    conn.execute("CREATE INDEX attribution_items_category ON attribution_items (category, item)")


@migration
def m007_retention(conn: sqlite3.Connection) -> None:
    # Retention (store/retention.py) drops an old call's raw bodies but keeps its row, its
    # attribution totals and its costs: `body_pruned_at` says when, so readers can tell a
    # pruned body from a missing one. One row per pruning run says what the last one did.
    # Self-contained: the file's switch to incremental auto-vacuum needs a VACUUM, which cannot
    # run inside this migration's transaction, so the first pruning run does it.
    conn.execute("ALTER TABLE exchanges ADD COLUMN body_pruned_at REAL")
    conn.execute(
        """
        CREATE TABLE retention_runs (
            at REAL NOT NULL,
            pruned INTEGER NOT NULL,
            freed_bytes INTEGER NOT NULL,
            kept_unshipped INTEGER NOT NULL,
            over_cap INTEGER NOT NULL
        )
        """
    )


@migration
def m008_incremental_attribution(conn: sqlite3.Connection) -> None:
    # Issue 18: a long session's calls share almost all of their attribution with the call
    # before, so the per-call rows were most of the spool. Self-contained (it only reads
    # m006's tables), so it can be renumbered freely.
    #
    # * attribution_calls: one row per call, with a stable integer key (an explicit INTEGER
    #   PRIMARY KEY survives VACUUM, a plain rowid does not). `summary` is either the JSON
    #   text as m006 stored it, or a raw-deflate BLOB compressed with the decoded summary of
    #   call `base` (an earlier call of the same session and agent) as the preset
    #   dictionary, so what the two share is stored once and only the difference is paid for;
    #   `depth` bounds the chain a reader decodes (store/attribution.py).
    # * attribution_keys: each (category, item) name once; attribution_totals: per call,
    #   side (0 request, 1 response) and key, just the numbers.
    # * The m006 names stay as views with the same columns, so every reader's SQL
    #   (stats, insights, viewer, status line) is unchanged.
    conn.execute(
        """
        CREATE TABLE attribution_calls (
            seq INTEGER PRIMARY KEY,
            exchange_id TEXT NOT NULL UNIQUE,
            call_kind TEXT NOT NULL,
            agent_id TEXT,
            body_bytes INTEGER NOT NULL,
            unattributed_bytes INTEGER NOT NULL,
            messages_bytes INTEGER NOT NULL,
            base INTEGER,
            depth INTEGER NOT NULL DEFAULT 0,
            summary NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX attribution_calls_base ON attribution_calls (base) WHERE base IS NOT NULL")
    conn.execute(
        "CREATE TABLE attribution_keys (id INTEGER PRIMARY KEY, category TEXT NOT NULL, item TEXT NOT NULL,"
        " UNIQUE (category, item))"
    )
    conn.execute(
        """
        CREATE TABLE attribution_totals (
            call INTEGER NOT NULL,
            side INTEGER NOT NULL,
            key INTEGER NOT NULL,
            bytes INTEGER NOT NULL,
            tokens INTEGER NOT NULL,
            cost_usd REAL,
            PRIMARY KEY (call, side, key)
        ) WITHOUT ROWID
        """
    )
    conn.execute("CREATE INDEX attribution_totals_key ON attribution_totals (key)")
    conn.execute(
        "INSERT INTO attribution_calls (exchange_id, call_kind, agent_id, body_bytes, unattributed_bytes,"
        " messages_bytes, summary) SELECT exchange_id, call_kind, agent_id, body_bytes, unattributed_bytes,"
        " messages_bytes, summary FROM attribution ORDER BY rowid"
    )
    conn.execute(
        "INSERT INTO attribution_keys (category, item) SELECT DISTINCT category, item FROM attribution_items"
    )
    conn.execute(
        "INSERT INTO attribution_totals (call, side, key, bytes, tokens, cost_usd)"
        " SELECT c.seq, i.side = 'response', k.id, i.bytes, i.tokens, i.cost_usd FROM attribution_items i"
        " JOIN attribution_calls c ON c.exchange_id = i.exchange_id"
        " JOIN attribution_keys k ON k.category = i.category AND k.item = i.item"
    )
    conn.execute("DROP TABLE attribution_items")
    conn.execute("DROP TABLE attribution")
    conn.execute(
        "CREATE VIEW attribution AS SELECT exchange_id, call_kind, agent_id, body_bytes, unattributed_bytes,"
        " messages_bytes, summary FROM attribution_calls"
    )
    conn.execute(
        "CREATE VIEW attribution_items AS SELECT c.exchange_id AS exchange_id,"
        " CASE t.side WHEN 0 THEN 'request' ELSE 'response' END AS side, k.category AS category, k.item AS item,"
        " t.bytes AS bytes, t.tokens AS tokens, t.cost_usd AS cost_usd"
        " FROM attribution_totals t JOIN attribution_calls c ON c.seq = t.call JOIN attribution_keys k ON k.id = t.key"
    )
    # Writes through the old names keep working: a whole JSON summary goes in as a call with
    # no base, and deleting a call that a later call's summary is compressed against is refused
    # (store.attribution.forget re-encodes such dependents first).
    conn.execute(
        """
        CREATE TRIGGER attribution_insert INSTEAD OF INSERT ON attribution BEGIN
            INSERT INTO attribution_calls (exchange_id, call_kind, agent_id, body_bytes, unattributed_bytes,
                messages_bytes, summary)
            VALUES (NEW.exchange_id, NEW.call_kind, NEW.agent_id, NEW.body_bytes, NEW.unattributed_bytes,
                NEW.messages_bytes, NEW.summary);
        END
        """
    )
    conn.execute(
        """
        CREATE TRIGGER attribution_delete INSTEAD OF DELETE ON attribution BEGIN
            SELECT RAISE(ABORT, 'a later call is stored against this one: use store.attribution.forget')
            WHERE EXISTS (SELECT 1 FROM attribution_calls d JOIN attribution_calls c ON d.base = c.seq
                          WHERE c.exchange_id = OLD.exchange_id);
            DELETE FROM attribution_totals
                WHERE call = (SELECT seq FROM attribution_calls WHERE exchange_id = OLD.exchange_id);
            DELETE FROM attribution_calls WHERE exchange_id = OLD.exchange_id;
        END
        """
    )
    conn.execute(
        """
        CREATE TRIGGER attribution_items_delete INSTEAD OF DELETE ON attribution_items BEGIN
            DELETE FROM attribution_totals
                WHERE call = (SELECT seq FROM attribution_calls WHERE exchange_id = OLD.exchange_id)
                AND side = (OLD.side = 'response')
                AND key = (SELECT id FROM attribution_keys WHERE category = OLD.category AND item = OLD.item);
        END
        """
    )


@migration
def m009_chunk_lists(conn: sqlite3.Connection) -> None:
    # Issue 18: each call listed every chunk of its body by SHA-256 (32 bytes a chunk, so a
    # 1 MB context paid about 10 KB a call for its list, and bumped every chunk's count).
    # Now a call names one row of `chunk_lists`: a root listing blob rowids, or a splice of an
    # earlier list (its first `head` and last `tail` entries around this call's `own`), see
    # store/bodies.py. Existing rows become roots with the same counts. Self-contained.
    conn.execute(
        """
        CREATE TABLE chunk_lists (
            id INTEGER PRIMARY KEY,
            parent INTEGER,
            head INTEGER NOT NULL,
            tail INTEGER NOT NULL,
            own BLOB NOT NULL,
            length INTEGER NOT NULL,
            depth INTEGER NOT NULL,
            refs INTEGER NOT NULL,
            nonce INTEGER NOT NULL
        )
        """
    )
    conn.execute("ALTER TABLE exchanges ADD COLUMN request_list INTEGER")
    rowids = dict(conn.execute("SELECT hash, rowid FROM blobs"))
    converted: list[tuple[int, str]] = []
    for exchange_id, packed in conn.execute(
        "SELECT id, request_chunks FROM exchanges WHERE length(request_chunks) > 0"
    ).fetchall():
        ids = array("q", (rowids[packed[i : i + 32]] for i in range(0, len(packed), 32)))
        if sys.byteorder == "big":
            ids.byteswap()
        row = conn.execute(
            "INSERT INTO chunk_lists (parent, head, tail, own, length, depth, refs, nonce)"
            " VALUES (NULL, 0, 0, ?, ?, 0, 1, ?) RETURNING id",
            (ids.tobytes(), len(ids), secrets.randbits(62)),
        ).fetchone()
        converted.append((row[0], exchange_id))
    conn.executemany("UPDATE exchanges SET request_list = ? WHERE id = ?", converted)
    conn.execute("ALTER TABLE exchanges DROP COLUMN request_chunks")


@migration
def m010_session_totals(conn: sqlite3.Connection) -> None:
    # What a session's Messages calls add up to, for the status line's summary. Kept by triggers
    # so every writer (capture, replay, re-capture, retention) keeps it exact without summing the
    # session's rows again on each call, which made a long session's summary cost grow with it.
    conn.execute(
        "CREATE TABLE session_totals (session_id TEXT PRIMARY KEY, calls INTEGER NOT NULL,"
        " cost_usd REAL NOT NULL, unpriced INTEGER NOT NULL, cache_read INTEGER NOT NULL,"
        " prompt INTEGER NOT NULL) WITHOUT ROWID"
    )
    conn.execute(
        "INSERT INTO session_totals SELECT session_id, count(*), total(cost_usd),"
        " sum(usage IS NOT NULL AND cost_usd IS NULL), coalesce(sum(cache_read_input_tokens), 0),"
        " coalesce(sum(input_tokens + cache_creation_input_tokens + cache_read_input_tokens), 0)"
        " FROM exchanges WHERE session_id IS NOT NULL AND kind = 'messages' GROUP BY session_id"
    )

    def add(row: str, sign: str) -> str:
        """One row's share, added (sign "+") or taken back ("-")."""
        share = (
            "1", f"coalesce({row}.cost_usd, 0)", f"({row}.usage IS NOT NULL AND {row}.cost_usd IS NULL)",
            f"coalesce({row}.cache_read_input_tokens, 0)",
            f"(coalesce({row}.input_tokens, 0) + coalesce({row}.cache_creation_input_tokens, 0)"
            f" + coalesce({row}.cache_read_input_tokens, 0))",
        )
        return (
            f"INSERT INTO session_totals VALUES ({row}.session_id, {', '.join(sign + v for v in share)})"
            " ON CONFLICT (session_id) DO UPDATE SET calls = calls + excluded.calls,"
            " cost_usd = cost_usd + excluded.cost_usd, unpriced = unpriced + excluded.unpriced,"
            " cache_read = cache_read + excluded.cache_read, prompt = prompt + excluded.prompt;"
        )

    totalled = "session_id, kind, cost_usd, usage, input_tokens, cache_creation_input_tokens, cache_read_input_tokens"
    for name, event, row, sign in (
        ("insert", "INSERT", "NEW", "+"),
        ("delete", "DELETE", "OLD", "-"),
        # An update is the old row taken out and the new one put in (two triggers: either may not count).
        ("update_old", f"UPDATE OF {totalled}", "OLD", "-"),
        ("update_new", f"UPDATE OF {totalled}", "NEW", "+"),
    ):
        counted = f"{row}.session_id IS NOT NULL AND {row}.kind = 'messages'"
        conn.execute(
            f"CREATE TRIGGER session_totals_{name} AFTER {event} ON exchanges WHEN {counted}"
            f" BEGIN {add(row, sign)} END"
        )
