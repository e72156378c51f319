"""Request bodies stored as spliced chunk lists (store/bodies.py), read back byte for byte."""

from __future__ import annotations

import hashlib
import sqlite3
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from opik_cipx.model import CallKind, Exchange
from opik_cipx.store import bodies, migrations, retention
from opik_cipx.store.chunks import chunk_bounds
from opik_cipx.store.migrations import transaction
from opik_cipx.store.retention import Policy
from opik_cipx.store.spool import Spool, connect
from tests.support.long_session import edited, grow, with_turn
from tests.test_spool import assert_refs_exact, referenced_hashes


def call(n: int, body: bytes, session: str = "sess-a", agent: str | None = None) -> Exchange:
    return Exchange(
        id=f"{n:032x}", started_at=1_700_000_000.0 + n, method="POST", path="/v1/messages",
        kind=CallKind.MESSAGES, request_body=body, response_body=f'{{"r":{n}}}'.encode(), status=200,
        session_id=session, agent_id=agent, request_bytes=len(body), response_bytes=8,
    )


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(connect(tmp_path / "spool.sqlite3"))
    yield s
    s.close()


def lists(sp: Spool) -> list[tuple[int | None, int, int]]:
    return list(sp.conn.execute("SELECT parent, depth, length(own) FROM chunk_lists ORDER BY id"))


def test_a_long_session_is_stored_as_splices_and_reads_back_exactly(spool: Spool) -> None:
    sent = list(grow(90))
    for n, body in enumerate(sent):
        spool.add(call(n, body))
    for n, body in enumerate(sent):
        stored = spool.get(f"{n:032x}")
        assert stored is not None and stored.request_body == body
    assert_refs_exact(spool)
    rows = lists(spool)
    # One root, then splices; a new root each MAX_DEPTH splices, so a read walks few rows.
    roots = [r for r in rows if r[0] is None]
    assert len(roots) == -(-len(sent) // (bodies.MAX_DEPTH + 1))
    assert max(depth for _, depth, _ in rows) == bodies.MAX_DEPTH
    # A splice names only the call's new chunks: a few, not one per chunk of the context.
    splices = [own // 8 for parent, _, own in rows if parent is not None]
    assert max(splices) <= 6
    whole = len(chunk_bounds(sent[-1]))
    assert whole > 30


@pytest.mark.parametrize("how", ["system", "compaction", "early_edit", "cache_control"])
def test_edits_that_break_the_shared_prefix_still_read_back(spool: Spool, how: str) -> None:
    sent = list(grow(25))
    changed = edited(sent[-1], how)
    sent += [changed, with_turn(changed, 3000)]
    for n, body in enumerate(sent):
        spool.add(call(n, body))
    assert [spool.get(f"{n:032x}").request_body for n in range(len(sent))] == sent  # type: ignore[union-attr]
    assert_refs_exact(spool)


def test_sessions_and_agents_splice_from_their_own_previous_call(spool: Spool) -> None:
    a, b = list(grow(6, seed=1)), list(grow(6, seed=2))
    n = 0
    for x, y in zip(a, b, strict=True):
        spool.add(call(n, x, "s1"))
        spool.add(call(n + 1, y, "s1", agent="sub"))
        n += 2
    assert [spool.get(f"{i:032x}").request_body for i in range(n)] == [  # type: ignore[union-attr]
        body for pair in zip(a, b, strict=True) for body in pair]
    assert sum(1 for parent, _, _ in lists(spool) if parent is None) == 2


def test_a_rolled_back_call_is_never_spliced_from(spool: Spool) -> None:
    sent = list(grow(8))
    for n, body in enumerate(sent[:5]):
        spool.add(call(n, body))
    with pytest.raises(RuntimeError), transaction(spool.conn):
        spool.add(call(5, sent[5]))
        raise RuntimeError("the batch failed after the call was added")
    # Another session's call takes the rolled-back list's id (and blob ids) for other bytes.
    other = list(grow(3, seed=99))[-1]
    spool.add(call(50, other, "sess-b"))
    spool.add(call(6, sent[6]))
    spool.add(call(7, sent[7]))
    for n in (0, 1, 2, 3, 4, 6, 7):
        assert spool.get(f"{n:032x}").request_body == sent[n]  # type: ignore[union-attr]
    assert spool.get(f"{50:032x}").request_body == other  # type: ignore[union-attr]
    assert_refs_exact(spool)


def test_a_call_stored_again_does_not_hang_off_the_list_it_replaces(spool: Spool) -> None:
    sent = list(grow(4))
    for n, body in enumerate(sent):
        spool.add(call(n, body))
    spool.add(call(3, sent[2] + b" "))  # the same id, another body
    assert spool.get(f"{3:032x}").request_body == sent[2] + b" "  # type: ignore[union-attr]
    assert_refs_exact(spool)
    # Nothing is kept that only the replaced body spelled.
    assert {h for (h,) in spool.conn.execute("SELECT hash FROM blobs")} == referenced_hashes(spool)


def test_pruning_every_call_leaves_only_what_kept_prefixes_spell(spool: Spool) -> None:
    sent = list(grow(40))
    for n, body in enumerate(sent):
        spool.add(call(n, body))
    spool.conn.execute("UPDATE exchanges SET kind = 'other'")  # no ship marks needed for these
    retention.prune(spool.conn, Policy(days=1), now=1_700_000_000.0 + 10 * 86400)
    assert spool.conn.execute("SELECT count(*) FROM exchanges WHERE body_pruned_at IS NULL").fetchone()[0] == 0
    assert_refs_exact(spool)
    assert {h for (h,) in spool.conn.execute("SELECT hash FROM blobs")} == referenced_hashes(spool)
    assert spool.conn.execute("SELECT count(*) FROM chunk_lists").fetchone()[0] <= 1


def test_m009_turns_digest_lists_into_root_lists_with_the_same_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    names = [m.__name__ for m in migrations.MIGRATIONS]
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[: names.index("m009_chunk_lists")])
    migrations.migrate(conn)
    sent = list(grow(12)) + [b""]
    refs: dict[bytes, int] = {}
    for n, body in enumerate(sent):  # as spool.add stored bodies before m009
        digests = []
        for start, end in chunk_bounds(body):
            piece = body[start:end]
            digest = hashlib.sha256(piece).digest()
            digests.append(digest)
            if digest not in refs:
                conn.execute("INSERT INTO blobs (hash, data, size, refs) VALUES (?, ?, ?, 0)",
                             (digest, zlib.compress(piece), len(piece)))
            refs[digest] = refs.get(digest, 0) + 1
        conn.execute(
            "INSERT INTO exchanges (id, started_at, kind, method, path, outcome, request_body_size, request_chunks)"
            " VALUES (?, ?, 'messages', 'POST', '/v1/messages', 'complete', ?, ?)",
            (f"{n:032x}", 1_700_000_000.0 + n, len(body), b"".join(digests)),
        )
    conn.executemany("UPDATE blobs SET refs = ? WHERE hash = ?", [(r, h) for h, r in refs.items()])
    conn.close()
    monkeypatch.undo()
    spool = Spool(connect(path))
    try:
        assert [spool.get(f"{n:032x}").request_body for n in range(len(sent))] == sent  # type: ignore[union-attr]
        assert_refs_exact(spool)
        columns = {r[1] for r in spool.conn.execute("PRAGMA table_info(exchanges)")}
        assert "request_chunks" not in columns
        # The next call of a converted session is stored as usual.
        spool.add(call(100, with_turn(sent[-2], 2000)))
        assert spool.get(f"{100:032x}").request_body == with_turn(sent[-2], 2000)  # type: ignore[union-attr]
    finally:
        spool.close()


def test_pack_round_trips_large_ids() -> None:
    ids = [1, 2**40 + 3, 7, 2**62]
    assert bodies.unpack(bodies.pack(ids)) == ids
    assert len(bodies.pack(ids)) == 8 * len(ids)


def test_a_list_id_reused_by_another_writer_after_a_rollback_is_not_taken_for_the_old_one(tmp_path: Path) -> None:
    # The gateway's spool thread and the capture worker write one file; one rolls back a call
    # that the other then stores itself (the journal's replay): same exchange id, same list id.
    path = tmp_path / "spool.sqlite3"
    a, b = Spool(connect(path)), Spool(connect(path))
    try:
        sent = list(grow(8))
        for n, body in enumerate(sent[:5]):
            a.add(call(n, body))
        with pytest.raises(RuntimeError), transaction(a.conn):
            a.add(call(5, sent[5]))
            rolled_back = a.conn.execute("SELECT request_list FROM exchanges WHERE id = ?", (f"{5:032x}",)).fetchone()
            raise RuntimeError("the batch failed after the call was added")
        b.add(call(5, sent[5]))
        again = b.conn.execute("SELECT request_list FROM exchanges WHERE id = ?", (f"{5:032x}",)).fetchone()
        assert again == rolled_back  # the situation this guards against
        a.add(call(6, sent[6]))
        a.add(call(7, sent[7]))
        assert [a.get(f"{n:032x}").request_body for n in range(8)] == sent  # type: ignore[union-attr]
        assert_refs_exact(a)
    finally:
        a.close()
        b.close()
