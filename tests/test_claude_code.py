"""Hook handling: always exit 0, nothing on stdout, bounded; session-start registers the session."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opik_cipx.claude.hooks import git_info, session_env, session_from_payload
from opik_cipx.config import Settings
from opik_cipx.ops import daemon

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def env(gateway_env: dict[str, str]) -> dict[str, str]:
    return gateway_env


def hook(event: str, payload: bytes, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "opik_cipx.cli", "hook", "claude_code", event], input=payload, env=env, capture_output=True, timeout=timeout
    )


def make_repo(root: Path, branch: str = "feature/x", origin: str | None = "https://user:secret@github.com/acme/app.git") -> Path:
    git = root / ".git"
    git.mkdir(parents=True)
    (git / "HEAD").write_text(f"ref: refs/heads/{branch}\n")
    config = "[core]\n\tbare = false\n"
    if origin:
        config += f'[remote "origin"]\n\turl = {origin}\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n'
    (git / "config").write_text(config)
    return root


def test_session_env_keeps_tracing_variables_and_drops_secrets() -> None:
    env = {
        "OPIK_CC_PROJECT": "p", "OPIK_CIPX_WORKSPACE": "w", "OPIK_CC_PARENT_TRACE_ID": "t", "OPIK_TRACE_ID": "u",
        "OPIK_CIPX_API_KEY": "secret", "OPIK_CC_TOKEN": "secret", "PATH": "/bin", "ANTHROPIC_API_KEY": "secret",
    }
    assert session_env(env) == {"OPIK_CC_PARENT_TRACE_ID": "t", "OPIK_CC_PROJECT": "p", "OPIK_CIPX_WORKSPACE": "w", "OPIK_TRACE_ID": "u"}


def test_git_info_reads_origin_without_credentials_and_the_branch_from_a_subdirectory(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "app")
    sub = repo / "src" / "pkg"
    sub.mkdir(parents=True)
    assert git_info(sub) == ("https://github.com/acme/app.git", "feature/x")


def test_git_info_without_origin_names_the_top_directory_and_a_detached_head_has_no_branch(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "app", origin=None)
    (repo / ".git" / "HEAD").write_text("3f2a9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b\n")
    assert git_info(repo) == (str(repo), None)
    assert git_info(tmp_path / "elsewhere") == (None, None)


def test_git_info_follows_a_worktree_gitdir_file(tmp_path: Path) -> None:
    main = make_repo(tmp_path / "main", branch="main")
    wt_git = main / ".git" / "worktrees" / "wt"
    wt_git.mkdir(parents=True)
    (wt_git / "HEAD").write_text("ref: refs/heads/topic\n")
    (wt_git / "commondir").write_text("../..\n")
    wt = tmp_path / "wt"
    wt.mkdir()
    (wt / ".git").write_text(f"gitdir: {wt_git}\n")
    assert git_info(wt) == ("https://github.com/acme/app.git", "topic")


def test_session_from_payload_takes_the_hook_fields(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "app")
    payload = {"session_id": "s-1", "cwd": str(repo), "transcript_path": "/t.jsonl", "source": "resume", "hook_event_name": "SessionStart"}
    info = session_from_payload(payload, {"OPIK_CC_PROJECT": "p", "HOME": "/h"})
    assert (info.session_id, info.cwd, info.transcript_path, info.source) == ("s-1", str(repo), "/t.jsonl", "resume")
    assert info.env == {"OPIK_CC_PROJECT": "p"} and info.git_branch == "feature/x"
    fallback = session_from_payload({}, {"CLAUDE_CODE_SESSION_ID": "s-2", "CLAUDE_PROJECT_DIR": str(repo)})
    assert fallback.session_id == "s-2" and fallback.cwd == str(repo)


@pytest.mark.slow
def test_session_start_starts_the_gateway_and_registers_the_session_silently(env: dict[str, str], tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "app")
    payload = {"session_id": "sess-42", "cwd": str(repo), "transcript_path": str(tmp_path / "t.jsonl"), "source": "startup", "hook_event_name": "SessionStart"}
    result = hook("session-start", json.dumps(payload).encode(), {**env, "OPIK_CC_PROJECT": "proj"})
    assert result.returncode == 0 and result.stdout == b"", result.stderr
    settings = Settings()
    live = daemon.probe(settings)
    assert live.alive and live.port is not None
    doc = daemon.get_json(live.port, "/_cipx/status")
    assert doc is not None and doc["sessions"] == 1
    daemon.stop(settings)
    # The registration outlives the gateway: it is in the spool.
    from opik_cipx.store.sessions import SessionTable
    from opik_cipx.store.spool import Spool, connect

    spool = Spool(connect(settings.spool_path))
    try:
        info = SessionTable(spool.conn).get("sess-42")
    finally:
        spool.close()
    assert info is not None and info.cwd == str(repo) and info.env == {"OPIK_CC_PROJECT": "proj"}
    assert info.git_repo == "https://github.com/acme/app.git" and info.source == "startup"


@pytest.mark.slow
def test_keep_alive_restarts_a_gateway_that_is_gone(env: dict[str, str]) -> None:
    result = hook("pre-tool-use", b'{"session_id": "s", "tool_name": "Bash"}', env)
    assert result.returncode == 0 and result.stdout == b""
    assert daemon.probe(Settings()).alive


@pytest.mark.parametrize(
    ("event", "payload", "extra"),
    [
        ("session-start", b"{not json", {}),
        ("session-start", b"[1, 2]", {}),
        ("no-such-event", b"{}", {}),
        ("session-start", b'{"session_id": "s"}', {"CIPX_HOST": "8.8.8.8"}),  # invalid configuration
    ],
)
def test_a_failing_hook_still_exits_0_with_nothing_on_stdout(env: dict[str, str], event: str, payload: bytes, extra: dict[str, str]) -> None:
    result = hook(event, payload, {**env, **extra})
    assert result.returncode == 0 and result.stdout == b""


def test_a_failure_is_written_to_the_log(env: dict[str, str]) -> None:
    hook("session-start", b"{not json", env)
    log = (Settings().logs_dir / "cipx.log").read_text()
    assert "hook session-start failed" in log


@pytest.mark.slow
def test_a_hook_whose_stdin_never_closes_leaves_within_its_bound(env: dict[str, str]) -> None:
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "opik_cipx.cli", "hook", "claude_code", "user-prompt-submit"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        out = proc.stdout.read()  # returns at exit; stdin is never closed
        proc.wait(20)
    finally:
        for pipe in (proc.stdin, proc.stdout):
            if pipe:
                pipe.close()
    assert proc.returncode == 0 and out == b""
    assert time.monotonic() - t0 < 8
