"""Run the real Claude Code CLI in isolation against the fake upstream.

Everything of one session runs inside a fresh loopback-only network namespace (``unshare -n``):
the fake Anthropic upstream, an optional process in the middle (the gateway, started by a shell
snippet the caller supplies) and each ``claude`` invocation. Nothing the CLI does can reach the
network, and nothing it writes lands outside the temp workspace.

Typical use::

    ws = Workspace.create(tmp_path, allow=["Bash"])
    result = run_claude_session(ws, [["-p", "list files"]], script=[Turn(tool_uses=[...]), Turn(text="done")])
    assert result.calls[0].rc == 0
    posts = result.messages_requests()

``middle`` is a bash snippet run inside the namespace with ``$UPSTREAM_URL`` (the fake) and
``$MIDDLE_URL_FILE`` set; it must start its process in the background and make the URL Claude
should use appear in ``$MIDDLE_URL_FILE``. Background jobs it starts are ended by pid at teardown.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_anthropic import RecordedRequest, Rules, Turn, load_records

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PREFIX = REPO_ROOT / ".cache" / "claude-code"
LOCAL_DEV_PREFIX = Path("/tmp/cc")
TESTED_VERSION = "2.1.197"

# Tools the default workspace allows without prompting; `-p` mode denies anything else.
DEFAULT_ALLOW: tuple[str, ...] = ("Bash", "Read", "Write", "Edit", "Glob", "Grep", "Skill", "Agent")

# The fake upstream script as the caller gives it: turns in order, rules, or "module:factory".
UpstreamScript = Sequence[Turn] | Rules | str | None


def claude_bin() -> Path | None:
    """The CLI from ``$CIPX_TEST_CLAUDE_PREFIX`` (the runner's install), else /tmp/cc, else None."""
    prefixes: list[Path] = []
    env_prefix = os.environ.get("CIPX_TEST_CLAUDE_PREFIX")
    if env_prefix:
        prefixes.append(Path(env_prefix))
    prefixes += [DEFAULT_PREFIX, LOCAL_DEV_PREFIX]
    for prefix in prefixes:
        candidate = prefix / "node_modules" / ".bin" / "claude"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def claude_missing_reason() -> str:
    where = os.environ.get("CIPX_TEST_CLAUDE_PREFIX", str(DEFAULT_PREFIX))
    return (
        f"Claude Code CLI not found under {where}/node_modules/.bin/claude or {LOCAL_DEV_PREFIX}; "
        "install it with `npm i --prefix \"$CIPX_TEST_CLAUDE_PREFIX\" @anthropic-ai/claude-code` (tests/run.sh does)"
    )


def needs_claude_code() -> pytest.MarkDecorator:
    """For tests that drive the real CLI: skipped when it is missing from a bare ``pytest`` run.

    When ``CIPX_TEST_CLAUDE_PREFIX`` names where the CLI was installed (tests/run.sh always
    sets it, after installing there), a missing CLI is a broken setup: the tests run and fail
    saying so (``run_claude_session`` raises :func:`claude_missing_reason`) instead of hiding it.
    """
    promised = bool(os.environ.get("CIPX_TEST_CLAUDE_PREFIX"))
    return pytest.mark.skipif(claude_bin() is None and not promised, reason=claude_missing_reason())


@functools.cache
def isolation_prefix() -> tuple[list[str], str]:
    """The command prefix that puts a process in a fresh network namespace, and a description.

    Root gets ``unshare -n``; others try a user namespace (``unshare -rn``). When neither works
    (containers without CAP_SYS_ADMIN and with user namespaces disabled) the session falls back
    to plain loopback: the fake still binds 127.0.0.1 only, but the CLI is not cut off.
    """
    if shutil.which("unshare") is None:
        return [], "none: unshare(1) not installed"
    if shutil.which("ip") is None:
        return [], "none: ip(8) not installed, cannot bring up lo in a new namespace"
    for prefix, label in ((["unshare", "-n", "--"], "netns"), (["unshare", "-rn", "--"], "userns+netns")):
        probe = subprocess.run([*prefix, "sh", "-c", "ip link set lo up"], capture_output=True, timeout=20)
        if probe.returncode == 0:
            return prefix, label
    return [], "none: unshare -n and unshare -rn both failed (no CAP_SYS_ADMIN, user namespaces disabled)"


@dataclass
class Workspace:
    """A temp HOME and project directory for one Claude Code session."""

    root: Path
    home: Path
    project: Path

    @classmethod
    def create(
        cls,
        root: Path,
        *,
        allow: Sequence[str] = DEFAULT_ALLOW,
        settings: Mapping[str, Any] | None = None,
    ) -> Workspace:
        home = root / "home"
        project = root / "project"
        (home / ".claude").mkdir(parents=True, exist_ok=True)
        project.mkdir(parents=True, exist_ok=True)
        merged: dict[str, Any] = {"permissions": {"allow": list(allow)}, "enableAllProjectMcpServers": True}
        merged.update(settings or {})
        (home / ".claude" / "settings.json").write_text(json.dumps(merged, indent=2))
        return cls(root=root, home=home, project=project)

    def write(self, relative: str, text: str, *, base: str = "project") -> Path:
        """Write a file under the project (default) or ``base="home"``, creating parents."""
        target = (self.project if base == "project" else self.home) / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return target


@dataclass
class CallResult:
    argv: list[str]
    rc: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class SessionResult:
    calls: list[CallResult]
    requests: list[RecordedRequest]
    isolation: str
    upstream_log: str
    middle_log: str
    after_output: str
    script_rc: int
    work: Path = field(repr=False, default=Path())

    def messages_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST" and r.route == "/v1/messages"]


def claude_env(home: Path, base_url: str | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal environment for the CLI: nothing of the caller's (no real keys) leaks in."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": str(home),
        "TMPDIR": str(home.parent / "tmp"),
        "ANTHROPIC_API_KEY": "sk-ant-test",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
    }
    if base_url is not None:
        env["ANTHROPIC_BASE_URL"] = base_url
    env.update(extra or {})
    return env


def run_in_netns(script: str, *, env: Mapping[str, str], cwd: Path, timeout: float) -> tuple[int, str, str, str]:
    """Run a bash script in a fresh loopback-only namespace: (rc, stdout, stderr, isolation)."""
    prefix, label = isolation_prefix()
    wrapped = ("ip link set lo up\n" if prefix else "") + script
    proc = subprocess.Popen(
        [*prefix, "bash", "-c", wrapped],
        cwd=cwd,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # The session leader is our child; its process group holds only what this script started.
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\n[claude_code] timed out after {timeout}s and was killed"
    return proc.returncode, out, err, label


def _script_file(script: UpstreamScript, work: Path) -> list[str]:
    if script is None:
        return []
    if isinstance(script, str):
        return ["--script-factory", script]
    path = work / "upstream-script.json"
    if isinstance(script, Rules):
        path.write_text(json.dumps(script.to_json(), indent=1))
    else:
        path.write_text(json.dumps([turn.to_dict() for turn in script], indent=1))
    return ["--script", str(path)]


def run_claude_session(
    workspace: Workspace,
    calls: Sequence[Sequence[str]],
    *,
    script: UpstreamScript = None,
    middle: str | None = None,
    after: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    call_timeout: float = 180.0,
    claude: Path | None = None,
) -> SessionResult:
    """Start the fake upstream (and ``middle``) in a namespace, run each ``claude <args>`` in order.

    ``calls`` are argument lists after ``claude`` (e.g. ``["-p", "hi", "--model", "claude-haiku-4-5"]``,
    then ``["--continue", "-p", "/compact"]``), run in the project directory one after another.
    ``after`` is a bash snippet run once the calls finish, while the upstream and middle still
    run (its output is in ``after_output``). Raises if the CLI is missing.
    """
    binary = claude or claude_bin()
    if binary is None:
        raise FileNotFoundError(claude_missing_reason())
    work = workspace.root / "session"
    work.mkdir(parents=True, exist_ok=True)
    (workspace.home.parent / "tmp").mkdir(exist_ok=True)
    record_dir = work / "upstream-records"
    upstream_cmd = [
        sys.executable,
        "-m",
        "tests.support.fake_anthropic",
        "--port",
        "0",
        "--port-file",
        str(work / "upstream.port"),
        "--record-dir",
        str(record_dir),
        *_script_file(script, work),
    ]
    q = shlex.quote
    lines = [
        "set -u",
        # End every background job this script started, by pid, however it exits.
        "cleanup() { for p in $(jobs -p); do kill \"$p\" 2>/dev/null; done; wait 2>/dev/null; }",
        "trap cleanup EXIT",
        "wait_file() { for _ in $(seq 300); do [ -s \"$1\" ] && return 0; sleep 0.1; done; echo \"timed out waiting for $1\" >&2; return 1; }",
        f"cd {q(str(REPO_ROOT))}",
        f"PYTHONPATH={q(str(REPO_ROOT))} {' '.join(map(q, upstream_cmd))} >{q(str(work / 'upstream.log'))} 2>&1 &",
        f"wait_file {q(str(work / 'upstream.port'))} || exit 90",
        f"export UPSTREAM_URL=http://127.0.0.1:$(cat {q(str(work / 'upstream.port'))})",
        "BASE_URL=$UPSTREAM_URL",
    ]
    if middle is not None:
        middle_file = work / "middle.url"
        lines += [
            f"export MIDDLE_URL_FILE={q(str(middle_file))}",
            f"export MIDDLE_LOG={q(str(work / 'middle.log'))}",
            middle,
            f"wait_file {q(str(middle_file))} || exit 91",
            f"BASE_URL=$(cat {q(str(middle_file))})",
        ]
    lines.append("export ANTHROPIC_BASE_URL=$BASE_URL")
    argvs: list[list[str]] = []
    for n, args in enumerate(calls):
        argv = [str(binary), *args]
        argvs.append(argv)
        stem = work / f"call-{n:02d}"
        lines += [
            f"(cd {q(str(workspace.project))} && timeout -k 5 {call_timeout:g} {' '.join(map(q, argv))}"
            f" </dev/null >{q(str(stem))}.stdout 2>{q(str(stem))}.stderr); echo $? >{q(str(stem))}.rc",
        ]
    if after is not None:
        lines += [f"( {after} ) >{q(str(work / 'after.log'))} 2>&1"]
    env = claude_env(workspace.home, extra=extra_env)
    rc, _out, err, label = run_in_netns(
        "\n".join(lines) + "\n", env=env, cwd=workspace.project, timeout=call_timeout * max(1, len(calls)) + 60
    )

    def read(path: Path) -> str:
        return path.read_text(errors="replace") if path.exists() else ""

    results = []
    for n, argv in enumerate(argvs):
        stem = work / f"call-{n:02d}"
        rc_text = read(stem.with_suffix(".rc")).strip()
        results.append(CallResult(argv=argv, rc=int(rc_text) if rc_text else -1, stdout=read(stem.with_suffix(".stdout")), stderr=read(stem.with_suffix(".stderr"))))
    requests = load_records(record_dir) if record_dir.exists() else []
    return SessionResult(
        calls=results,
        requests=requests,
        isolation=label,
        upstream_log=read(work / "upstream.log") + (f"\n[session stderr]\n{err}" if err.strip() else ""),
        middle_log=read(work / "middle.log"),
        after_output=read(work / "after.log"),
        script_rc=rc,
        work=work,
    )


def run_claude(
    workspace: Workspace,
    *args: str,
    script: UpstreamScript = None,
    middle: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    timeout: float = 180.0,
) -> tuple[int, str, str]:
    """One ``claude <args>`` call in isolation: (rc, stdout, stderr)."""
    result = run_claude_session(workspace, [list(args)], script=script, middle=middle, extra_env=extra_env, call_timeout=timeout)
    call = result.calls[0]
    stderr = call.stderr if result.script_rc == 0 else f"{call.stderr}\n{result.upstream_log}"
    return call.rc, call.stdout, stderr
