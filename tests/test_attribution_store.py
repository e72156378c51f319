"""Per-call attribution totals in the spool: what is stored, and what a re-analysis gets back."""

from __future__ import annotations

import json
from pathlib import Path

from opik_cipx.attribute import attribute_request
from opik_cipx.attribute.types import USER_PROMPT
from opik_cipx.capture.exchange import build_exchange
from opik_cipx.proxy.recorder import HeaderList, Recorder
from opik_cipx.store import attribution as attribution_store
from opik_cipx.store.spool import Spool, connect


def long_session_call(prompts: int) -> bytes:
    messages = []
    for i in range(prompts):
        messages.append({"role": "user", "content": [{"type": "text", "text": f"prompt {i}: " + "please refactor " * 60}]})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": "done"}]})
    messages.append({"role": "user", "content": [{"type": "text", "text": "and now the tests"}]})
    return json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": messages}).encode()


def test_stored_totals_leave_prompt_text_to_the_body_and_keep_its_length(tmp_path: Path) -> None:
    body = long_session_call(40)
    attr = attribute_request(body, headers={}, path="/v1/messages")
    prompts = [t for t in attr.items if t.category == USER_PROMPT]
    assert len(prompts) == 41 and all(t.detail and t.detail.get("text") for t in prompts)

    stored = attribution_store.summary(attr)
    stored_prompts = [t for t in stored["items"] if t["category"] == USER_PROMPT]
    assert [t["detail"]["chars"] for t in stored_prompts] == [t.detail["chars"] for t in prompts]  # type: ignore[index]
    assert all("text" not in t["detail"] for t in stored_prompts)
    # The earlier prompts' text, stored again with every call, was most of the row.
    assert len(json.dumps(stored)) < len(json.dumps(attribution_store.totals(attr))) / 3

    # A re-analysis of the stored call finds the text in the stored body.
    spool = Spool(connect(tmp_path / "spool.db"))
    rec = Recorder("POST", "/v1/messages", HeaderList([(b"content-type", b"application/json")]))
    rec.body = body
    rec.finish()
    ex = build_exchange(rec, None)
    spool.add(ex)
    attribution_store.save(spool.conn, ex.id, attr)
    again = attribution_store.reanalyze(spool.conn, spool.get(ex.id), None)  # type: ignore[arg-type]
    assert [t.detail["text"] for t in again.items if t.category == USER_PROMPT] == [  # type: ignore[index]
        t.detail["text"] for t in prompts  # type: ignore[index]
    ]
    spool.close()


# --- incremental storage (m007): what readers get back equals what a full store would hold ------

import sqlite3  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from opik_cipx.attribute.analysis import Captured, analyze  # noqa: E402
from opik_cipx.capture.pipeline import capture_chain  # noqa: E402
from opik_cipx.capture.stages import Failure, store_batch  # noqa: E402
from opik_cipx.config import Settings, ensure_home  # noqa: E402
from opik_cipx.model import CallKind  # noqa: E402
from opik_cipx.pricing import PriceTable  # noqa: E402
from opik_cipx.store import migrations  # noqa: E402
from tests.support import long_session  # noqa: E402

CC = Path(__file__).parent / "fixtures" / "claude_code"
CODEX = Path(__file__).parent / "fixtures" / "codex"


def recorded(body: bytes, headers: list[tuple[str, str]], path: str, n: int) -> Recorder:
    rec = Recorder("POST", path, HeaderList([(k.lower().encode(), v.encode()) for k, v in headers]))
    rec.body = body
    rec.response_head(200, ((b"content-type", b"application/json"),))
    rec.chunk(json.dumps({"id": f"msg_{n}", "type": "message", "model": "claude-opus-4-6", "stop_reason": "end_turn",
                          "content": [{"type": "text", "text": f"answer {n}"}],
                          "usage": {"input_tokens": 5 + n, "cache_creation_input_tokens": 300 + 7 * n,
                                    "cache_read_input_tokens": max(0, len(body) // 4 - 400), "output_tokens": 9}}
                         ).encode())
    rec.finish()
    return rec


def scenario_calls(directory: Path) -> Iterator[Recorder]:
    for n, body_path in enumerate(sorted(p for p in directory.glob("*.json") if not p.name.endswith(".meta.json"))):
        meta = json.loads(body_path.with_name(body_path.stem + ".meta.json").read_text())
        headers = [(k, v) for k, v in meta["headers"] if k.lower() not in ("content-length",)]
        yield recorded(body_path.read_bytes(), headers, meta["path"], n)


def synthetic_calls(turns: int, session: str = long_session.SESSION_ID) -> Iterator[Recorder]:
    for n, body in enumerate(long_session.grow(turns), start=1):
        yield recorded(body, [("x-claude-code-session-id", session)], "/v1/messages?beta=true", n)


def expected(item: Captured) -> tuple[dict[str, Any], set[tuple[Any, ...]]]:
    """What a full store of this call holds, from a walk from its first byte: its summary and item rows."""
    assert item.attribution is not None
    attr = item.attribution
    if item.exchange.kind is CallKind.MESSAGES:  # the walk the capture resumed, done from byte 0
        attr = analyze(item.exchange, PriceTable.builtin(), item.content, item.commands)
        assert attr == item.attribution
    doc = json.loads(json.dumps(attribution_store.summary(attr, item.commands)))
    rows = {("request", t.category, t.item, t.bytes, t.tokens, t.cost_usd) for t in attr.items}
    rows |= {("response", t.category, t.item, t.bytes, t.tokens, t.cost_usd) for t in attr.output_items}
    return doc, rows


def stored_rows(conn: sqlite3.Connection, exchange_id: str) -> set[tuple[Any, ...]]:
    return set(conn.execute("SELECT side, category, item, bytes, tokens, cost_usd FROM attribution_items"
                            " WHERE exchange_id = ?", (exchange_id,)))


def store_all(settings: Settings, spool: Spool, recs: Iterator[Recorder]) -> list[Captured]:
    chain = capture_chain(settings, PriceTable.builtin, lambda: None, home=settings.home)
    failures: list[Failure] = []
    done: list[Captured] = []
    for rec in recs:
        done += store_batch(spool, [rec], chain.build, chain.stages, failures)
    assert failures == []
    return done


@pytest.fixture
def capture_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Settings, Spool]]:
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = Settings(home=tmp_path / "cipx")
    ensure_home(settings)
    spool = Spool(connect(settings.spool_path))
    yield settings, spool
    spool.close()


@pytest.mark.parametrize("scenario", sorted(p.name for p in CC.iterdir() if p.is_dir()))
def test_every_recording_reads_back_exactly_what_a_full_store_holds(
    capture_home: tuple[Settings, Spool], scenario: str
) -> None:
    settings, spool = capture_home
    done = store_all(settings, spool, scenario_calls(CC / scenario))
    assert len(done) >= 5
    for item in done:
        doc, rows = expected(item)
        assert attribution_store.load(spool.conn, item.exchange.id) == doc
        assert stored_rows(spool.conn, item.exchange.id) == rows
    # A recorded session's calls share most of their summary: most are stored against an earlier one.
    based = spool.conn.execute("SELECT count(*) FROM attribution_calls WHERE base IS NOT NULL").fetchone()[0]
    assert based >= len(done) // 2


@pytest.mark.parametrize("run", sorted(p.name for p in CODEX.iterdir() if p.is_dir()))
def test_every_codex_recording_reads_back_exactly_what_a_full_store_holds(
    capture_home: tuple[Settings, Spool], run: str
) -> None:
    settings, spool = capture_home
    recs = []
    for n, body_path in enumerate(sorted((CODEX / run).glob("*.body"))):
        meta = json.loads(body_path.with_suffix(".json").read_text())
        recs.append(recorded(body_path.read_bytes(), [(k, v) for k, v in meta["headers"]], "/v1/responses", n))
    done = store_all(settings, spool, iter(recs))
    assert done and all(item.exchange.kind is CallKind.RESPONSES for item in done)
    for item in done:
        doc, rows = expected(item)
        assert attribution_store.load(spool.conn, item.exchange.id) == doc
        assert stored_rows(spool.conn, item.exchange.id) == rows


def test_a_long_session_reads_back_exactly_and_stores_a_fraction_of_its_summaries(
    capture_home: tuple[Settings, Spool],
) -> None:
    settings, spool = capture_home
    done = store_all(settings, spool, synthetic_calls(60))
    whole = 0
    for item in done:
        doc, rows = expected(item)
        assert attribution_store.load(spool.conn, item.exchange.id) == doc
        assert stored_rows(spool.conn, item.exchange.id) == rows
        whole += len(json.dumps(doc, separators=(",", ":")))
    stored, depth = spool.conn.execute("SELECT total(length(summary)), max(depth) FROM attribution_calls").fetchone()
    assert depth == attribution_store.MAX_DEPTH - 1  # chains restart, so a reader decodes a bounded number
    assert stored < whole / 10, (stored, whole)


def test_storing_a_call_again_keeps_the_calls_stored_against_it_readable(
    capture_home: tuple[Settings, Spool],
) -> None:
    settings, spool = capture_home
    done = store_all(settings, spool, synthetic_calls(6))
    conn = spool.conn
    first = done[1].exchange.id
    assert conn.execute("SELECT count(*) FROM attribution_calls WHERE base = (SELECT seq FROM attribution_calls"
                        " WHERE exchange_id = ?)", (first,)).fetchone()[0] == 1
    before = {item.exchange.id: attribution_store.load(conn, item.exchange.id) for item in done}
    # Re-attributed with other commands (as the viewer's "reattribute" does): its summary changes.
    attr = done[1].attribution
    assert attr is not None
    attribution_store.save(conn, first, attr, ("acme-cmd",))
    assert attribution_store.stored_commands(conn, first) == ("acme-cmd",)
    for item in done:
        if item.exchange.id != first:
            assert attribution_store.load(conn, item.exchange.id) == before[item.exchange.id]
    # No chain loops back: re-stored calls compress only against calls stored before them.
    for seq, base in conn.execute("SELECT seq, base FROM attribution_calls WHERE base IS NOT NULL"):
        assert base < seq


def test_forget_keeps_later_calls_readable_and_a_raw_delete_of_a_base_is_refused(
    capture_home: tuple[Settings, Spool],
) -> None:
    settings, spool = capture_home
    done = store_all(settings, spool, synthetic_calls(5))
    conn = spool.conn
    ids = [item.exchange.id for item in done]
    with pytest.raises(sqlite3.IntegrityError, match="forget"):
        conn.execute("DELETE FROM attribution WHERE exchange_id = ?", (ids[0],))
    assert attribution_store.forget(conn, ids[:2]) == 2
    assert attribution_store.load(conn, ids[0]) is None and stored_rows(conn, ids[0]) == set()
    for item in done[2:]:
        assert attribution_store.load(conn, item.exchange.id) == expected(item)[0]
    # The newest call has nothing stored against it: the old SQL still deletes it.
    conn.execute("DELETE FROM attribution WHERE exchange_id = ?", (ids[-1],))
    assert attribution_store.load(conn, ids[-1]) is None


def test_the_migration_keeps_m006_rows_readable_through_the_old_names(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "old.sqlite3", isolation_level=None)
    upto = migrations.MIGRATIONS.index(migrations.m008_incremental_attribution)
    for fn in migrations.MIGRATIONS[:upto]:
        fn(conn)
    doc = {"commands": ["x"], "call_kind": "main", "items": [{"category": "system", "item": "billing"}]}
    conn.execute("INSERT INTO attribution VALUES ('e1', 'main', NULL, 100, 2, 50, ?)", (json.dumps(doc),))
    conn.executemany("INSERT INTO attribution_items VALUES ('e1', ?, ?, ?, ?, ?, ?)", [
        ("request", "system", "billing", 70, 17, 0.25), ("response", "output", "text", 30, 8, None)])
    migrations.m008_incremental_attribution(conn)
    assert attribution_store.load(conn, "e1") == doc
    assert stored_rows(conn, "e1") == {("request", "system", "billing", 70, 17, 0.25),
                                       ("response", "output", "text", 30, 8, None)}
    assert conn.execute("SELECT exchange_id, call_kind, body_bytes, unattributed_bytes, messages_bytes"
                        " FROM attribution").fetchall() == [("e1", "main", 100, 2, 50)]
