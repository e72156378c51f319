"""The Codex plugin in this repo: manifests, and the real CLI accepting and running it."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.claude_code import REPO_ROOT, run_in_netns
from tests.support.codex_cli import CodexWorkspace, codex_bin, codex_env, config_toml, needs_codex

PLUGIN_FILES = (".codex-plugin", ".agents", ".claude-plugin", "hooks", "plugin", "commands")


def test_manifests_are_small_valid_and_point_inside_the_repo() -> None:
    manifest = json.loads((REPO_ROOT / ".codex-plugin" / "plugin.json").read_text())
    assert manifest["name"] == "opik-cipx" and manifest["hooks"].startswith("./")
    hooks = json.loads((REPO_ROOT / manifest["hooks"]).read_text())
    (start,) = hooks["hooks"]["SessionStart"]
    (hook,) = start["hooks"]
    # The launcher exits 0 when the binary is missing; `|| true` covers the rest: never blocks.
    assert hook["command"].startswith('"${PLUGIN_ROOT}/plugin/cipx-launch" sync codex')
    assert hook["command"].endswith("|| true") and hook["timeout"] <= 10
    market = json.loads((REPO_ROOT / ".agents" / "plugins" / "marketplace.json").read_text())
    (entry,) = market["plugins"]
    assert entry["name"] == manifest["name"] and entry["source"] == "./"
    assert entry["version"] == manifest["version"]


@pytest.mark.slow
@needs_codex()
def test_real_codex_adds_the_marketplace_installs_the_plugin_and_runs_its_hook(tmp_path: Path) -> None:
    ws = CodexWorkspace.create(tmp_path)
    source = ws.home / "opik-cipx"  # Codex lists local plugins only from inside HOME
    for name in PLUGIN_FILES:
        shutil.copytree(REPO_ROOT / name, source / name)
    recorder = ws.home / "fake-opik-cipx"
    recorder.write_text('#!/bin/sh\necho "$@" >> "$HOME/hook-calls.txt"\n')
    recorder.chmod(0o755)
    config = ws.home / ".codex" / "config.toml"
    config.write_text(config_toml(None))
    binary = shlex.quote(str(codex_bin()))
    q = shlex.quote
    port_file = tmp_path / "upstream.port"
    fake = f"cd {q(str(REPO_ROOT))} && PYTHONPATH={q(str(REPO_ROOT))} {q(sys.executable)} -m tests.support.fake_responses"
    script = "\n".join([
        "set -u",
        "cleanup() { for p in $(jobs -p); do kill \"$p\" 2>/dev/null; done; wait 2>/dev/null; }",
        "trap cleanup EXIT",
        f"( {fake} --port-file {q(str(port_file))} ) &",
        f"for _ in $(seq 100); do [ -s {q(str(port_file))} ] && break; sleep 0.1; done",
        f"sed -i \"1i openai_base_url = \\\"http://127.0.0.1:$(cat {q(str(port_file))})/v1\\\"\" {q(str(config))}",
        f"{binary} plugin marketplace add {q(str(source))} || exit 11",
        f"{binary} plugin add opik-cipx@opik-enterprise || exit 12",
        f"{binary} plugin list > {q(str(tmp_path / 'list.txt'))} 2>&1",
        # Plugin hooks run once trusted (the TUI asks); exec is told to skip that review here.
        f"cd {q(str(ws.project))} && timeout 60 {binary} exec --dangerously-bypass-hook-trust --skip-git-repo-check"
        f" 'hi' </dev/null >{q(str(tmp_path / 'exec.out'))} 2>{q(str(tmp_path / 'exec.err'))}; true",
    ]) + "\n"
    env = {**codex_env(ws), "OPIK_CIPX_BIN": str(recorder)}
    rc, out, err, _ = run_in_netns(script, env=env, cwd=ws.project, timeout=120)
    assert rc == 0, f"{out}\n{err}"
    listing = (tmp_path / "list.txt").read_text()
    assert "opik-cipx@opik-enterprise" in listing and "not installed" not in listing
    assert 'enabled = true' in config.read_text()
    assert "done" in (tmp_path / "exec.out").read_text()  # the session went on: the hook never blocks
    calls = (ws.home / "hook-calls.txt").read_text().splitlines()
    assert calls and calls[0] == "sync codex", (tmp_path / "exec.err").read_text()[-2000:]


def test_launcher_is_the_one_claude_uses() -> None:
    # One launcher for both clients: it finds the binary and never fails a hook when it is missing.
    out = subprocess.run(["/bin/sh", str(REPO_ROOT / "plugin" / "cipx-launch"), "--help"], capture_output=True,
                         text=True, env={"PATH": "/nonexistent", "HOME": "/nonexistent"}, timeout=10)
    assert out.returncode == 0 and "binary was not found" in out.stderr
