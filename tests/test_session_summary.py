"""The per-session summary (capture/session_summary.py): what the status line reads after each call."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from opik_cipx.capture import session_summary
from opik_cipx.capture.pipeline import Chain, capture_chain
from opik_cipx.capture.stages import store_batch
from opik_cipx.config import Settings, ensure_home
from opik_cipx.pricing import PriceTable
from opik_cipx.segment import render, summary_of
from opik_cipx.store.sessions import SessionTable
from opik_cipx.store.spool import Spool, connect
from tests.support.long_session import SESSION_ID, grow, recorded_call


@dataclass
class Capture:
    settings: Settings
    spool: Spool
    chain: Chain


@pytest.fixture
def capture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Capture]:
    """A fresh spool and the capture chain as the worker builds it."""
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = Settings(home=tmp_path / "cipx")
    ensure_home(settings)
    spool = Spool(connect(settings.spool_path))
    prices, sessions = PriceTable.builtin(), SessionTable(spool.conn)
    yield Capture(settings, spool, capture_chain(settings, lambda: prices, lambda: sessions, home=settings.home))
    spool.close()


def test_the_summary_of_a_stored_session_matches_its_rows(capture: Capture) -> None:
    settings, spool, chain = capture.settings, capture.spool, capture.chain
    stored = []
    for n, body in enumerate(grow(6), start=1):
        failures: list[object] = []
        stored += store_batch(spool, [recorded_call(body, n)], chain.build, chain.stages, failures,  # type: ignore[arg-type]
                              committed=chain.committed)
        assert not failures
    last = stored[-1]
    summary = session_summary.session_summary(spool, last)
    assert summary is not None
    # The totals (kept by triggers) and the last call's top categories (taken from the call in
    # memory) are what summing and grouping the stored rows gives.
    calls, cost = spool.conn.execute(
        "SELECT count(*), total(cost_usd) FROM exchanges WHERE session_id = ?", (SESSION_ID,)).fetchone()
    assert summary["calls"] == calls == 6 and summary["cost_usd"] == pytest.approx(cost)
    from_rows = session_summary.session_summary(spool, dataclasses.replace(last, attribution=None))
    assert from_rows is not None
    assert summary["last_main"]["top_categories"] == from_rows["last_main"]["top_categories"]
    assert len(summary["last_main"]["top_categories"]) == 2
    # And what the stage wrote: one private file, the line already rendered, then the summary.
    path = session_summary.summary_path(settings.home, SESSION_ID)
    assert path is not None and os.stat(path).st_mode & 0o777 == 0o600
    line, doc, end = path.read_text().split("\n")
    assert line == render(summary, {}, alive=True) and line.startswith("◆ $") and end == ""
    written = summary_of(path.read_text())
    assert written is not None and written == json.loads(doc)
    assert {**written, "updated_at": 0} == json.loads(json.dumps({**summary, "updated_at": 0}))
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_the_files_are_written_even_when_the_sessions_directory_went_away(tmp_path: Path) -> None:
    summary = {"session_id": "s-1", "calls": 1, "cost_usd": 0.5}
    session_summary.write_summary(tmp_path, summary)
    (tmp_path / "sessions" / "s-1.status").unlink()
    (tmp_path / "sessions").rmdir()
    session_summary.write_summary(tmp_path, summary)
    assert summary_of((tmp_path / "sessions" / "s-1.status").read_text()) == summary
    assert (tmp_path / "sessions").stat().st_mode & 0o777 == 0o700


def test_a_batch_writes_each_session_s_files_once_after_it_commits_and_none_if_it_rolls_back(
    capture: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opik_cipx.capture.stages import Failure

    settings, spool, chain = capture.settings, capture.spool, capture.chain
    written: list[tuple[str, int, bool]] = []
    real = session_summary.write_summary

    def write(home: Path, summary: dict[str, object]) -> None:
        # Written after the commit: another connection already sees the batch's rows.
        other = connect(settings.spool_path)
        try:
            rows = other.execute("SELECT count(*) FROM exchanges").fetchone()[0]
        finally:
            other.close()
        written.append((str(summary["session_id"]), int(summary["calls"]), rows == summary["calls"]))  # type: ignore[call-overload]
        real(home, summary)

    monkeypatch.setattr(session_summary, "write_summary", write)
    bodies = list(grow(4))
    failures: list[Failure] = []
    store_batch(spool, [recorded_call(b, n) for n, b in enumerate(bodies[:3])], chain.build, chain.stages,
                failures, committed=chain.committed)
    assert not failures and written == [(SESSION_ID, 3, True)]

    def boom(item: object) -> object:
        raise OSError("disk full")  # after the stages ran, before the commit

    with pytest.raises(OSError):
        store_batch(spool, [recorded_call(bodies[3], 3)], chain.build, chain.stages, failures, keep=boom,
                    committed=chain.committed)
    assert written == [(SESSION_ID, 3, True)]
    path = session_summary.summary_path(settings.home, SESSION_ID)
    assert path is not None and (summary_of(path.read_text()) or {})["calls"] == 3
