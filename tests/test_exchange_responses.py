"""A Responses call built into an Exchange (capture/exchange.py with wire/responses.py)."""

from __future__ import annotations

import json

from opik_cipx.capture.exchange import build_exchange
from opik_cipx.model import CallKind, Outcome
from opik_cipx.pricing import PriceTable
from opik_cipx.proxy.recorder import HeaderList, Recorder
from tests.support.fake_responses import Answer, answer_events


def _http_call(events: list[dict[str, object]]) -> Recorder:
    rec = Recorder("POST", "/v1/responses", HeaderList([(b"session-id", b"s-1"), (b"originator", b"codex_exec")]))
    rec.body = json.dumps({"model": "gpt-5.1-codex", "input": []}).encode()
    rec.response_head(200, ((b"Content-Type", b"text/event-stream"),))
    for e in events:
        rec.chunk(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode())
    return rec


def test_client_leaving_after_response_completed_is_a_complete_call() -> None:
    rec = _http_call(answer_events(Answer(), {}, "resp_1", "gpt-5.1-codex"))
    rec.client_gone("client disconnected")  # Codex hung up before the last chunk
    rec.finish()
    ex = build_exchange(rec, PriceTable.builtin())
    assert (ex.kind, ex.outcome, ex.error) == (CallKind.RESPONSES, Outcome.COMPLETE, None)
    assert ex.session_id == "s-1" and ex.cost is not None and ex.cost.known


def test_client_leaving_mid_answer_is_still_client_gone() -> None:
    rec = _http_call(answer_events(Answer(), {}, "resp_1", "gpt-5.1-codex")[:-1])
    rec.client_gone("client disconnected")
    rec.finish()
    ex = build_exchange(rec, PriceTable.builtin())
    assert ex.outcome is Outcome.CLIENT_GONE and ex.usage is None
