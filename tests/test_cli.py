"""The lifecycle commands end to end, as scripts and install.sh use them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from opik_cipx.claude.provision import doctor, setup_plan
from opik_cipx.config import Settings
from opik_cipx.ops import daemon

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def env(gateway_env: dict[str, str]) -> dict[str, str]:
    return gateway_env


def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "opik_cipx.cli", *args], env=env, capture_output=True, text=True, timeout=60, input=stdin)


@pytest.mark.slow
def test_status_exit_codes_follow_the_gateway_through_start_and_stop(env: dict[str, str]) -> None:
    down = cli(env, "status")
    assert down.returncode == 1 and down.stdout.startswith("opik-cipx: not running")
    assert json.loads(cli(env, "status", "--json").stdout)["exit_code"] == 1

    up = cli(env, "ensure-running")
    assert up.returncode == 0, up.stderr
    pid = daemon.probe(Settings()).pid
    status = cli(env, "status")
    assert status.returncode == 0 and f"pid {pid}" in status.stdout and "counters" in status.stdout
    doc = json.loads(cli(env, "status", "--json").stdout)
    assert doc["exit_code"] == 0 and doc["pid"] == pid and doc["state"] == "running"

    stopped = cli(env, "stop")
    assert stopped.returncode == 0 and f"stopped pid {pid}" in stopped.stdout
    assert cli(env, "status").returncode == 1
    assert "not running" in cli(env, "stop").stdout


@pytest.mark.slow
def test_status_tells_the_truth_about_a_wedged_gateway(env: dict[str, str]) -> None:
    assert cli(env, "ensure-running").returncode == 0
    live = daemon.probe(Settings())
    assert live.pid is not None
    os.kill(live.pid, signal.SIGSTOP)  # alive, holding its lock, answering nothing
    try:
        wedged = cli(env, "status", "--timeout", "0.5")
        assert wedged.returncode == 2
        assert "NOT HEALTHY" in wedged.stdout and "did not answer" in wedged.stdout
    finally:
        os.kill(live.pid, signal.SIGCONT)
    assert cli(env, "status").returncode == 0


@pytest.mark.slow
def test_logs_prints_the_tail_of_the_gateway_log(env: dict[str, str]) -> None:
    assert cli(env, "logs").returncode == 1
    cli(env, "ensure-running")
    logs = cli(env, "logs", "-n", "3")
    assert logs.returncode == 0 and "listening on http://127.0.0.1:" in logs.stdout
    assert len(logs.stdout.splitlines()) <= 3


@pytest.mark.slow
def test_purge_asks_first_then_stops_and_wipes_the_spool(env: dict[str, str]) -> None:
    cli(env, "ensure-running")
    settings = Settings()
    assert settings.spool_path.exists()
    refused = cli(env, "purge", stdin="")
    assert refused.returncode == 1 and "--yes" in refused.stderr
    assert settings.spool_path.exists() and daemon.probe(settings).alive

    purged = cli(env, "purge", "--yes")
    assert purged.returncode == 0, purged.stderr
    assert not list(settings.spool_dir.iterdir()) and not daemon.probe(settings).alive


@pytest.mark.slow
def test_doctor_names_each_failure_with_its_fix_and_passes_once_set_up(env: dict[str, str], isolated_home: Path) -> None:
    settings = Settings()
    checks = {c.name: c for c in doctor(settings, environ={}, managed=())}
    assert checks["gateway"].status == "fail" and "ensure-running" in (checks["gateway"].fix or "")
    assert checks["base-url"].status == "fail" and "setup --apply" in (checks["base-url"].fix or "")
    assert checks["hooks"].status == "fail"

    setup_plan(settings, apply_settings=True).apply()
    cli(env, "ensure-running")
    checks = {c.name: c for c in doctor(settings, environ={}, managed=())}
    # The fixture's upstream (127.0.0.1:9) refuses connections: doctor says so.
    failing = {n: c.status for n, c in checks.items() if c.status == "fail"}
    assert failing == {"base-url": "fail", "upstream": "fail"}, checks
    # CIPX_PORT=0 here: setup wrote the default port, which is not the running gateway's.
    assert "9909" in checks["base-url"].detail
    cli(env, "stop")  # down, the configured port (the default) is what the base URL must name

    managed = isolated_home / "managed-settings.json"
    managed.write_text(json.dumps({"enabledPlugins": {"opik-cipx@opik-enterprise": True}, "env": {"ANTHROPIC_BASE_URL": "http://127.0.0.1:9909/"}}))
    checks = {c.name: c for c in doctor(settings, environ={}, managed=(managed,))}
    assert checks["hooks"].detail.startswith("plugin") and checks["base-url"].status == "ok"

    out = cli(env, "doctor", "--json")
    doc = json.loads(out.stdout)
    assert {c["name"] for c in doc["checks"]} >= {"config", "gateway", "spool", "opik", "hooks", "base-url"}
    assert out.returncode == (0 if doc["ok"] else 1)


def test_version_needs_no_configuration(env: dict[str, str]) -> None:
    out = cli({**env, "CIPX_HOST": "8.8.8.8"}, "version")
    assert out.returncode == 0 and out.stdout.startswith("opik-cipx ")


@pytest.mark.parametrize("args", [("stop",), ("logs",), ("purge", "--yes"), ("uninstall", "--dry-run"), ("status",),
                                  ("doctor",), ("stats",)])
def test_maintenance_commands_work_with_any_configuration(env: dict[str, str], args: tuple[str, ...]) -> None:
    bad = {**env, "CIPX_PORT": "abc", "CIPX_UPSTREAM_URL": "nope", "CIPX_SAMPLE_RATE": "x"}
    out = cli(bad, *args)
    assert "Traceback" not in out.stderr and "pydantic" not in (out.stdout + out.stderr)
    assert out.returncode in (0, 1, 2), out.stderr
    shown = out.stdout + out.stderr
    assert "CIPX_PORT: must be a whole number (it is 'abc')" in shown, shown


def test_commands_that_start_a_gateway_refuse_a_bad_port_in_plain_words(env: dict[str, str]) -> None:
    out = cli({**env, "CIPX_PORT": "abc"}, "ensure-running")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "CIPX_PORT: must be a whole number (it is 'abc')" in out.stderr
    assert "Input should" not in out.stderr


@pytest.mark.slow
def test_a_bad_opik_setting_leaves_the_gateway_running_local_only(env: dict[str, str], isolated_home: Path) -> None:
    (isolated_home / ".opik.config").write_text("[opik]\nurl_override = ftp://opik\napi_key = sk-x\n")
    hook = cli(env, "hook", "claude_code", "session-start", stdin='{"session_id": "s1", "cwd": "/tmp"}')
    assert hook.returncode == 0
    assert daemon.probe(Settings(opik_base_url=None)).state is daemon.State.RUNNING, "the hook started it"
    out = cli(env, "status", "--json")
    doc = json.loads(out.stdout)
    assert doc["state"] == "running" and doc["exit_code"] == 2
    problem = "configuration: ~/.opik.config: url_override: must start with http:// or https://"
    assert [p for p in doc["problems"] if p.startswith(problem)], doc["problems"]
    assert len([p for p in doc["problems"] if "url_override" in p]) == 1, "said once, not by both sides"
    assert doc["shipper"]["destination"] is None
    checks = {c["name"]: c for c in json.loads(cli(env, "doctor", "--json").stdout)["checks"]}
    assert checks["config"]["status"] == "fail" and "url_override" in checks["config"]["detail"]


@pytest.mark.slow
def test_an_unreachable_upstream_is_a_problem_in_status_doctor_and_logs(env: dict[str, str]) -> None:
    import urllib.error
    import urllib.request

    assert cli(env, "ensure-running").returncode == 0  # the fixture's upstream is 127.0.0.1:9: refused
    port = daemon.probe(Settings()).port
    for _ in range(2):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/messages", data=b'{"model":"m","messages":[]}',
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=10)
        assert err.value.code == 502
        err.value.close()
    status = cli(env, "status")
    assert status.returncode == 2, status.stdout
    assert "problem: upstream http://127.0.0.1:9 unreachable" in status.stdout
    assert "UNREACHABLE: 2 call(s) in a row" in status.stdout
    doc = json.loads(cli(env, "doctor", "--json").stdout)
    upstream = next(c for c in doc["checks"] if c["name"] == "upstream")
    assert upstream["status"] == "fail" and "cannot connect to 127.0.0.1:9" in upstream["detail"] and upstream["fix"]
    logs = cli(env, "logs").stdout
    assert "upstream http://127.0.0.1:9 unreachable" in logs


@pytest.mark.parametrize("args", [("logs",), ("proxy",), ("ensure-running",), ("purge", "--yes"), ("stop",),
                                  ("status",), ("doctor",)])
def test_a_state_dir_that_is_a_file_is_one_clear_line(env: dict[str, str], tmp_path: Path, args: tuple[str, ...]) -> None:
    not_a_dir = tmp_path / "state-file"
    not_a_dir.write_text("")
    out = cli({**env, "CIPX_HOME": str(not_a_dir)}, *args)
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode != 0
    assert "is a file, not a directory" in out.stderr or "Not a directory" in out.stderr, out.stderr
    assert "purge" not in out.stdout + out.stderr


def _read_only(path: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the CLI with ``path`` mounted read-only (a private mount namespace: root needs no chmod)."""
    script = f'mount --bind "{path}" "{path}" && mount -o remount,ro,bind "{path}" && exec "$@"'
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", sys.executable, "-m", "opik_cipx.cli", *args],
                          env=env, capture_output=True, text=True, timeout=60)


needs_root_mounts = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                       reason="read-only mounts need root and unshare")


@needs_root_mounts
def test_a_read_only_state_dir_reads_and_never_advises_deleting_data(env: dict[str, str], isolated_home: Path) -> None:
    from opik_cipx.store.spool import Spool, connect

    settings = Settings()
    settings.spool_dir.mkdir(parents=True)
    settings.logs_dir.mkdir(parents=True)
    (settings.logs_dir / "cipx.log").write_text("a line\n")
    Spool(connect(settings.spool_path)).close()
    home = settings.home
    stats_out = _read_only(home, "stats", "--json", env=env)
    assert stats_out.returncode == 0, stats_out.stderr
    assert json.loads(stats_out.stdout)["totals"]["calls"] == 0
    assert _read_only(home, "logs", env=env).stdout == "a line\n"
    doctor_out = _read_only(home, "doctor", "--json", env=env)
    spool = next(c for c in json.loads(doctor_out.stdout)["checks"] if c["name"] == "spool")
    assert spool["status"] == "fail" and "writable" in spool["fix"] and "purge" not in spool["fix"]
    for args in (("proxy",), ("ensure-running",), ("purge", "--yes")):
        out = _read_only(home, *args, env=env)
        assert out.returncode != 0 and "Traceback" not in out.stderr, (args, out.stderr)
        assert "read-only file system" in out.stderr, (args, out.stderr)


def test_output_into_a_closed_pipe_exits_quietly(env: dict[str, str]) -> None:
    proc = subprocess.Popen(f'"{sys.executable}" -m opik_cipx.cli --help | head -c 10 >/dev/null; '
                            f'"{sys.executable}" -m opik_cipx.cli stats --help | head -n 1 >/dev/null',
                            shell=True, env=env, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_broken_pipe_mid_output_is_not_a_traceback(env: dict[str, str], tmp_path: Path) -> None:
    log = Settings().logs_dir / daemon.LOG_NAME
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"line {i} " + "x" * 200 + "\n" for i in range(20000)))
    proc = subprocess.run(f'"{sys.executable}" -m opik_cipx.cli logs -n 20000 | head -n 2',
                          shell=True, env=env, capture_output=True, text=True, timeout=60)
    assert proc.stdout.count("\n") == 2 and "Traceback" not in proc.stderr and "Broken" not in proc.stderr, proc.stderr


@pytest.mark.parametrize(("args", "needle"), [
    (("stop", "--timeout", "-1"), "must be more than 0 seconds"),
    (("stop", "--timeout", "soon"), "is not a number of seconds"),
    (("ensure-running", "--timeout", "0"), "must be more than 0 seconds"),
    (("status", "--timeout", "nan"), "must be more than 0 seconds"),
    (("logs", "-n", "-5"), "must be at least 0"),
    (("explain", "--last", "0"), "must be at least 1"),
])
def test_numeric_flags_are_validated(env: dict[str, str], args: tuple[str, ...], needle: str) -> None:
    out = cli(env, *args)
    assert out.returncode == 2 and needle in out.stderr, out.stderr


def test_help_and_version_flag(env: dict[str, str]) -> None:
    assert cli(env, "--version").stdout.strip() == cli(env, "version").stdout.strip()
    text = cli(env, "--help").stdout
    assert "SUPPRESS" not in text and "capture-worker" not in text and "stats" in text


@pytest.mark.slow
def test_ensure_running_reports_a_child_that_failed_at_once(env: dict[str, str]) -> None:
    import socket
    import time

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        out = cli({**env, "CIPX_PORT": str(port)}, "ensure-running", "--timeout", "40")
        took = time.monotonic() - started
    assert out.returncode == 1 and "exited while starting" in out.stderr, out.stderr
    assert "cannot listen" in out.stderr or "in use" in out.stderr.lower(), out.stderr
    assert took < 20, f"waited {took:.1f}s of a 40s timeout for a child that had already failed"


@pytest.mark.slow
def test_ensure_running_says_when_the_running_gateway_has_another_upstream(env: dict[str, str]) -> None:
    assert cli(env, "ensure-running").returncode == 0
    out = cli({**env, "CIPX_UPSTREAM_URL": "http://127.0.0.1:10"}, "ensure-running")
    assert out.returncode == 0
    assert "relays to http://127.0.0.1:9, not http://127.0.0.1:10" in out.stderr and "restart" in out.stderr


@pytest.mark.slow
def test_a_foreground_proxy_creates_only_private_files(env: dict[str, str]) -> None:
    import time

    settings = Settings()
    proc = subprocess.Popen([sys.executable, "-m", "opik_cipx.cli", "proxy"], env={**env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(200):
            if settings.port_file.exists() and settings.spool_path.exists():
                break
            time.sleep(0.05)
        time.sleep(0.5)  # the capture worker opens its log
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    made = [p for p in settings.home.rglob("*") if p.is_file()]
    assert any(p.name == "spool.sqlite3" for p in made) and any(p.name == "capture-worker.log" for p in made)
    loose = {str(p.relative_to(settings.home)): oct(p.stat().st_mode & 0o777) for p in made
             if p.stat().st_mode & 0o077}
    assert loose == {}, loose


@pytest.mark.slow
def test_opik_refusing_from_the_start_is_degraded_never_wedged_across_a_restart(env: dict[str, str]) -> None:
    import time
    import urllib.request

    opik_env = {**env, "OPIK_CIPX_BASE_URL": "http://127.0.0.1:9/opik/api", "OPIK_CIPX_API_KEY": "k",
                "OPIK_CC_TRACING_ENABLED": "1"}
    port_file = Path(env["HOME"]) / "upstream.port"
    upstream = subprocess.Popen([sys.executable, "-m", "tests.support.fake_anthropic", "--port-file", str(port_file)],
                                env=env, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if port_file.exists():
                break
            time.sleep(0.05)
        opik_env["CIPX_UPSTREAM_URL"] = f"http://127.0.0.1:{port_file.read_text().strip()}"
        for round_ in range(2):  # before and after a restart
            assert cli(opik_env, "restart" if round_ else "ensure-running").returncode == 0
            port = daemon.probe(Settings()).port
            body = b'{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}'
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/messages", data=body,
                                         headers={"Content-Type": "application/json", "x-api-key": "k"})
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=20) as resp:
                assert resp.status == 200
            doc: dict[str, Any] = {}
            for _ in range(100):
                doc = json.loads(cli(opik_env, "status", "--json").stdout)
                if (doc.get("shipper") or {}).get("last_error"):
                    break
                time.sleep(0.2)
            assert doc["state"] == "running" and doc["exit_code"] == 2, doc
            assert any(p.startswith("Opik is failing") for p in doc["problems"]), doc["problems"]
            assert not any("wedged" in p or "did not answer" in p for p in doc["problems"])
            assert doc["shipper"]["last_error"]["at"] and doc["shipper"]["last_shipped"] is None
            text = cli(opik_env, "status").stdout
            line = next(ln for ln in text.splitlines() if "last Opik error" in ln)
            assert " ago)" in line, line
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)


def test_tracing_writes_the_marker_and_says_what_decides(env: dict[str, str], tmp_path: Path, isolated_home: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    out = cli(env, "tracing", "status", "--project", str(project))
    assert "is off (decided by the default (off))" in out.stdout
    out = cli(env, "tracing", "on", "--global", "--project", str(project))
    assert (isolated_home / ".claude" / ".opik-tracing-enabled").read_text() == "on\n"
    assert "is on (decided by " in out.stdout and "no Opik destination" in out.stdout
    out = cli(env, "tracing", "off", "--project", str(project))
    assert (project / ".claude" / ".opik-tracing-enabled").read_text() == "off\n"
    assert "is off (decided by " + str(project / ".claude" / ".opik-tracing-enabled") in out.stdout
    out = cli({**env, "OPIK_CC_TRACING_ENABLED": "1"}, "tracing", "status", "--project", str(tmp_path))
    assert "decided by OPIK_CC_TRACING_ENABLED in the environment" in out.stdout
