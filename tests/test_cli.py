"""The lifecycle commands end to end, as scripts and install.sh use them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

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
