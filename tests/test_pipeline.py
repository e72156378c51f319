"""The capture chain, assembled once (capture/pipeline.py), run without sockets on a temp spool."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from opik_cipx.attribute.analysis import Captured
from opik_cipx.capture.pipeline import capture_chain
from opik_cipx.capture.stages import Failure, store_attribution, store_batch, store_exchange
from opik_cipx.config import Settings, ensure_home
from opik_cipx.pricing import PriceTable
from opik_cipx.proxy.recorder import HeaderList, Recorder
from opik_cipx.store.spool import Spool, connect

FIXTURES = Path(__file__).parent / "fixtures" / "claude_code"
SESSION = "5b0c8f0e-1111-4222-8333-944445555666"


def finished_call(body: bytes) -> Recorder:
    rec = Recorder("POST", "/v1/messages", HeaderList([(b"x-claude-code-session-id", SESSION.encode())]))
    rec.body = body
    rec.response_head(200, ((b"content-type", b"application/json"),))
    rec.chunk(json.dumps({"type": "message", "model": "claude-opus-4-6", "stop_reason": "end_turn",
                          "content": [{"type": "text", "text": "done"}],
                          "usage": {"input_tokens": 900, "output_tokens": 7}}).encode())
    rec.finish()
    return rec


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("HOME", str(tmp_path))
    return Settings(home=tmp_path / "cipx")  # no Opik destination: HOME holds no ~/.opik.config


def test_the_chain_stores_the_exchange_then_its_attribution_then_the_span_stage(settings: Settings) -> None:
    extra_ran: list[str] = []

    def extra(sp: Spool, item: Captured) -> None:
        extra_ran.append(item.exchange.id)

    chain = capture_chain(settings, PriceTable.builtin, lambda: None, extra_stages=[extra], home=settings.home)
    assert chain.stages[:2] == [store_exchange, store_attribution]
    # Then the status line's session summary (capture/session_summary.py), the caller's stages, the spans.
    assert chain.stages[2].__module__ == "opik_cipx.capture.session_summary"
    assert chain.stages[3] is extra and chain.stages[-1] == chain.spans.record

    ensure_home(settings)
    assert settings.opik_url is None
    spool = Spool(connect(settings.spool_path))
    try:
        body = next(p for p in sorted((FIXTURES / "opus").glob("*.json")) if not p.name.endswith(".meta.json"))
        failures: list[Failure] = []
        done = store_batch(spool, [finished_call(body.read_bytes())], chain.build, chain.stages, failures)
        assert failures == [] and len(done) == 1
        (item,) = done
        assert item.attribution is not None and item.exchange.cost is not None
        assert extra_ran == [item.exchange.id]
        conn = spool.conn
        assert conn.execute("SELECT count(*) FROM exchanges").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM attribution").fetchone()[0] == 1
        # No Opik destination: the span stage marks the call and queues nothing.
        assert conn.execute("SELECT state FROM ship_marks").fetchall() == [("no_destination",)]
    finally:
        spool.close()


def test_the_chain_reads_prices_and_sessions_at_each_call(settings: Settings) -> None:
    tables: list[Any] = []

    def prices() -> PriceTable | None:
        tables.append(None)
        return None

    chain = capture_chain(settings, prices, lambda: None, home=settings.home)
    body = b'{"model":"claude-opus-4-6","messages":[{"role":"user","content":"hi"}]}'
    chain.build(finished_call(body))
    chain.build(finished_call(body))
    assert len(tables) == 2


def test_before_build_runs_first_for_every_call(settings: Settings) -> None:
    seen: list[str] = []
    chain = capture_chain(settings, lambda: None, lambda: None, before_build=lambda rec: seen.append(rec.id),
                          home=settings.home)
    rec = finished_call(b'{"model":"claude-opus-4-6","messages":[]}')
    assert chain.build(rec).exchange.id == rec.id and seen == [rec.id]
