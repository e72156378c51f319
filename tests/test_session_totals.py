"""session_totals (migration m010): triggers keep each session's sums equal to summing its rows."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opik_cipx.model import CallKind, Cost, Usage
from opik_cipx.store import migrations
from opik_cipx.store.spool import Spool, connect
from tests.test_spool import make_exchange

SUMMED = (
    "SELECT session_id, count(*), total(cost_usd), sum(usage IS NOT NULL AND cost_usd IS NULL),"
    " sum(cache_read_input_tokens), sum(input_tokens + cache_creation_input_tokens + cache_read_input_tokens)"
    " FROM exchanges WHERE session_id IS NOT NULL AND kind = 'messages' GROUP BY session_id"
)


def summed(conn: sqlite3.Connection) -> dict[str, tuple[object, ...]]:
    return {row[0]: (row[1], pytest.approx(row[2]), row[3], row[4], row[5]) for row in conn.execute(SUMMED)}


def kept(conn: sqlite3.Connection) -> dict[str, tuple[object, ...]]:
    rows = conn.execute("SELECT session_id, calls, cost_usd, unpriced, cache_read, prompt FROM session_totals")
    return {row[0]: tuple(row[1:]) for row in rows if row[1]}


# One write: (exchange number, session, kind, priced?, tokens) for an add or a re-add, or a delete.
writes = st.lists(
    st.tuples(
        st.integers(0, 7), st.sampled_from(["s1", "s2", None]), st.sampled_from([CallKind.MESSAGES, CallKind.OTHER]),
        st.sampled_from(["priced", "unpriced", "no usage"]), st.integers(0, 5000), st.booleans(),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes)
def test_totals_follow_every_insert_re_capture_and_delete(tmp_path: Path, ops: list[tuple[object, ...]]) -> None:
    spool = Spool(connect(tmp_path / f"t{abs(hash(tuple(ops)))}.sqlite3"))
    try:
        for n, session, kind, priced, tokens, delete in ops:
            if delete:
                spool.conn.execute("DELETE FROM exchanges WHERE id = ?", (f"{n:032x}",))
                continue
            usage = None if priced == "no usage" else Usage(
                input_tokens=tokens, cache_creation_input_tokens=tokens // 2, cache_read_input_tokens=tokens * 3,
                output_tokens=7)
            cost = Cost(total_usd=tokens / 1e6) if priced == "priced" else None
            spool.add(make_exchange(n, session_id=session, kind=kind, usage=usage, cost=cost))  # type: ignore[arg-type]
        assert kept(spool.conn) == summed(spool.conn)
    finally:
        spool.close()


def test_m010_fills_the_totals_of_sessions_stored_before_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "old.sqlite3"
    names = [m.__name__ for m in migrations.MIGRATIONS]
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[: names.index("m010_session_totals")])
    spool = Spool(connect(path))
    for n in range(6):
        usage = Usage(input_tokens=n, cache_creation_input_tokens=10, cache_read_input_tokens=100 * n, output_tokens=1)
        spool.add(make_exchange(n, session_id=f"s{n % 2}", usage=usage, cost=Cost(total_usd=0.5) if n else None))
    spool.close()
    monkeypatch.undo()
    spool = Spool(connect(path))
    try:
        assert kept(spool.conn) == summed(spool.conn)
        assert set(kept(spool.conn)) == {"s0", "s1"}
        spool.add(make_exchange(9, session_id="s1", usage=Usage(input_tokens=1, output_tokens=1)))
        assert kept(spool.conn) == summed(spool.conn)
    finally:
        spool.close()
