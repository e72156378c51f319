"""End to end: the real Claude Code CLI, isolated in a network namespace, against the fake upstream."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
from multidict import CIMultiDict

from tests.support.cc_project import MARKERS, MODELS, label
from tests.support.claude_code import (
    REPO_ROOT,
    Workspace,
    isolation_prefix,
    needs_claude_code,
    run_claude,
    run_claude_session,
)
from tests.support.fake_anthropic import (
    RecordedRequest,
    Rule,
    Rules,
    Turn,
    load_records,
)

needs_cli = needs_claude_code()
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "claude_code"

MARKER = "MARKER_E2E_BASH_OUT_5d1c"


def one_tool_call_rules() -> Rules:
    # Bash first; once its result (holding the marker) comes back, a closing text.
    return Rules(
        [
            Rule(when={"last_user_contains": MARKER}, turn=Turn(text="all done")),
            Rule(when={"has_tools": True}, turn=Turn(text="", tool_uses=[("Bash", {"command": f"echo {MARKER}", "description": "echo"})])),
        ]
    )


@pytest.mark.e2e
@pytest.mark.slow
@needs_cli
def test_scripted_session_with_one_tool_call_reaches_the_fake_upstream(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path, allow=["Bash"])
    result = run_claude_session(
        ws,
        [["-p", "please run the echo", "--output-format", "json", "--model", "claude-sonnet-4-5-20250929"]],
        script=one_tool_call_rules(),
        after="getent hosts example.com || echo no-resolve; cat /proc/net/route | wc -l",
    )
    (call,) = result.calls
    assert call.rc == 0, call.stderr + result.upstream_log
    assert call.json()["result"] == "all done"
    if isolation_prefix()[0]:
        # Inside the namespace there is only lo: no route table entries besides the header.
        assert result.after_output.split()[-1] == "1", result.after_output

    assert [r.method for r in result.requests][:1] == ["HEAD"]
    posts = result.messages_requests()
    assert len(posts) == 2
    first, second = (p.json() for p in posts)
    assert all(p.path == "/v1/messages?beta=true" for p in posts)
    assert first["stream"] is True and first["model"] == "claude-sonnet-4-5-20250929"
    assert "Bash" in [tool["name"] for tool in first["tools"]]
    assert MARKER.encode() not in posts[0].body
    results = [b for m in second["messages"] for b in (m["content"] if isinstance(m["content"], list) else []) if b.get("type") == "tool_result"]
    assert len(results) == 1 and MARKER in json.dumps(results[0])
    session_ids = {p.headers["X-Claude-Code-Session-Id"] for p in posts}
    assert len(session_ids) == 1 and session_ids == {call.json()["session_id"]}
    assert all(p.headers["x-api-key"] == "sk-ant-test" for p in posts)
    assert all(p.headers["User-Agent"].startswith("claude-cli/") for p in posts)
    # The CLI relays the fake's request id into its transcript; the fake answered each POST.
    assert all(p.status == 200 and p.response_headers["request-id"].startswith("req_") for p in posts)


@pytest.mark.e2e
@pytest.mark.slow
@needs_cli
def test_middle_hook_puts_a_process_between_claude_and_the_upstream(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path, allow=[])
    middle_records = tmp_path / "middle-records"
    script = tmp_path / "middle-script.json"
    script.write_text(json.dumps([Turn(text="answered by the middle").to_dict()]))
    # A second fake stands in for the gateway: if Claude used $MIDDLE_URL_FILE, only it sees POSTs.
    port_file = tmp_path / "middle.port"
    middle = (
        f"PYTHONPATH={shlex.quote(str(REPO_ROOT))} {shlex.quote(sys.executable)} -m tests.support.fake_anthropic "
        f"--port-file {shlex.quote(str(port_file))} --record-dir {shlex.quote(str(middle_records))} --script {shlex.quote(str(script))} "
        f'>"$MIDDLE_LOG" 2>&1 &\n'
        f"for _ in $(seq 100); do [ -s {shlex.quote(str(port_file))} ] && break; sleep 0.1; done\n"
        f'echo "http://127.0.0.1:$(cat {shlex.quote(str(port_file))})" > "$MIDDLE_URL_FILE"\n'
        f'echo "upstream was $UPSTREAM_URL" >&2'
    )
    rc, stdout, stderr = run_claude(ws, "-p", "hi", middle=middle)
    assert rc == 0, stderr
    assert stdout.strip() == "answered by the middle"
    assert [r for r in load_records(middle_records) if r.route == "/v1/messages"]
    assert not [r for r in load_records(ws.root / "session" / "upstream-records") if r.route == "/v1/messages"]


def fixture_pairs() -> list[tuple[Path, dict]]:
    return [(meta.with_name(meta.name.replace(".meta.json", ".json")), json.loads(meta.read_text())) for meta in sorted(FIXTURES.glob("*/*.meta.json"))]


def test_recorded_fixtures_cover_every_model_and_their_meta_matches_the_bytes() -> None:
    pairs = fixture_pairs()
    assert {meta["scenario"] for _, meta in pairs} == set(MODELS)
    for body_path, meta in pairs:
        body = body_path.read_bytes()
        assert json.loads(body)["model"] == meta["model"]
        assert set(meta["expected_markers"]) <= set(meta["markers"]), body_path
        for marker, found in meta["markers"].items():
            assert found["category"] == MARKERS[marker]
            assert all(body[offset : offset + len(marker)] == marker.encode() for offset in found["offsets"])
            assert body.count(marker.encode()) == len(found["offsets"])
        assert not {k.lower() for k, _ in meta["headers"]} & {"x-api-key", "authorization"}
    total = sum(path.stat().st_size for path in FIXTURES.rglob("*") if path.is_file())
    assert total < 15 * 1024 * 1024


def test_label_reproduces_the_recorded_labels_and_subagent_requests_carry_agent_id() -> None:
    for body_path, meta in fixture_pairs():
        request = RecordedRequest("POST", meta["path"], CIMultiDict(meta["headers"]), body_path.read_bytes())
        assert label(request) == meta["label"], body_path
        assert (meta["agent_id"] is not None) == meta["label"].startswith("subagent"), body_path
