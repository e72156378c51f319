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
