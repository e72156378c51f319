"""The background gateway: one per state dir, liveness by lock and process identity, graceful stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import filelock
import psutil
import pytest

from opik_cipx.config import Settings
from opik_cipx.ops import daemon
from opik_cipx.store.spool import Spool, connect
from tests.support.fake_anthropic import Turn

ROOT = Path(__file__).resolve().parent.parent

# Each test starts, kills and waits for real gateway daemons: seconds apiece.
pytestmark = pytest.mark.slow


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "gateway"), str(ROOT)])
    env.setdefault("CIPX_PORT", "0")
    env.setdefault("CIPX_UPSTREAM_URL", "http://127.0.0.1:9")
    env.update(extra)
    return env


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opik_cipx.cli", *args], env=env or cli_env(), capture_output=True, text=True, timeout=timeout
    )


def gateways_of(home: Path) -> list[psutil.Process]:
    """Live daemon processes serving this state dir (found by their environment)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "environ"]):
        cmd = proc.info.get("cmdline") or []
        env = proc.info.get("environ") or {}
        if "proxy" in cmd and "--daemon" in cmd and env.get("CIPX_HOME") == str(home):
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except psutil.NoSuchProcess:
                pass
    return found


@pytest.fixture
def settings(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    # Daemons spawned in-process build their Settings from this environment, as in real use.
    for key, value in cli_env(CIPX_SHUTDOWN_GRACE="5").items():
        if key.startswith("CIPX_") or key == "PYTHONPATH":
            monkeypatch.setenv(key, value)
    return Settings()


@pytest.fixture(autouse=True)
def stop_gateways(isolated_home: Path) -> Iterator[None]:
    """Whatever a test started in its state dir is ended, by pid, at teardown."""
    yield
    home = isolated_home / ".opik-cipx"
    for proc in gateways_of(home):
        proc.terminate()
    for proc in gateways_of(home):
        try:
            proc.wait(5)
        except psutil.TimeoutExpired:
            proc.kill()


def test_ten_concurrent_ensure_running_calls_start_exactly_one_gateway(settings: Settings) -> None:
    env = cli_env()
    procs = [
        subprocess.Popen([sys.executable, "-m", "opik_cipx.cli", "ensure-running"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(10)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 10, outs
    pids = {out.split("pid ")[1].split(",")[0] for out, _ in outs}
    assert len(pids) == 1, outs
    time.sleep(0.5)  # a second gateway, had one been spawned, would be up by now
    running = gateways_of(settings.home)
    assert [p.pid for p in running] == [int(pids.pop())]
    live = daemon.probe(settings)
    assert live.alive and daemon.answering(live)


def test_kill_9_leaves_a_stale_pidfile_that_does_not_block_a_restart(settings: Settings) -> None:
    first = daemon.ensure_running(settings, timeout=20)
    assert first.alive and first.pid is not None
    os.kill(first.pid, signal.SIGKILL)
    psutil.Process(first.pid).wait(10) if psutil.pid_exists(first.pid) else None
    deadline = time.monotonic() + 10
    while not daemon.lock_is_free(daemon.Paths.of(settings).lock) and time.monotonic() < deadline:
        time.sleep(0.05)

    assert daemon.Paths.of(settings).pidfile.exists(), "kill -9 leaves the pidfile behind"
    stale = daemon.probe(settings)
    assert stale.state is daemon.State.STOPPED and stale.stale_pidfile
    status = cli("status")
    assert status.returncode == 1 and "not running" in status.stdout

    second = daemon.ensure_running(settings, timeout=20)
    assert second.alive and second.pid != first.pid
    assert daemon.answering(second)


def test_a_reused_pid_is_not_mistaken_for_a_live_gateway(settings: Settings) -> None:
    settings.home.mkdir(parents=True, exist_ok=True)
    paths = daemon.Paths.of(settings)
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        real = daemon.PidRecord(stranger.pid, daemon.start_ticks(stranger.pid) or "-", psutil.Process(stranger.pid).create_time())
        # The pid a dead gateway recorded now belongs to an unrelated process started later.
        reused = daemon.PidRecord(stranger.pid, str(int(real.start_ticks) - 1000), real.create_time - 10)
        assert real.is_alive() and not reused.is_alive()
        paths.pidfile.write_text(reused.render())
        paths.port_file.write_text("9\n")
        assert daemon.probe(settings).state is daemon.State.STOPPED

        # Even with the lock held (by us, standing in for a gateway that is still starting), a
        # pidfile naming another process is not "running", and stop refuses to signal it.
        holder = filelock.FileLock(paths.lock, thread_local=False)
        holder.acquire()
        try:
            live = daemon.probe(settings)
            assert live.state is daemon.State.UNVERIFIED and not live.alive
            with pytest.raises(daemon.DaemonError):
                daemon.stop(settings)
            status = cli("status")
            assert status.returncode == 2, status.stdout
        finally:
            holder.release()
        assert stranger.poll() is None, "the stranger must never be signalled"

        started = daemon.ensure_running(settings, timeout=20)
        assert started.pid not in (None, stranger.pid) and daemon.answering(started)
    finally:
        stranger.kill()
        stranger.wait()


def test_foreground_proxy_refuses_to_be_a_second_gateway(settings: Settings) -> None:
    live = daemon.ensure_running(settings, timeout=20)
    second = cli("proxy", timeout=20)
    assert second.returncode == 1 and f"pid {live.pid}" in second.stderr
    assert [p.pid for p in gateways_of(settings.home)] == [live.pid]


def test_stop_is_graceful_and_clears_the_pidfile(settings: Settings) -> None:
    assert daemon.stop(settings).message == "not running"
    live = daemon.ensure_running(settings, timeout=20)
    result = daemon.stop(settings)
    assert result.was_running and not result.forced and result.pid == live.pid
    assert not daemon.Paths.of(settings).pidfile.exists() and not settings.port_file.exists()
    assert not psutil.pid_exists(live.pid) or psutil.Process(live.pid).status() == psutil.STATUS_ZOMBIE


def test_ensure_running_gives_up_within_its_bound_when_the_gateway_cannot_start(settings: Settings, tmp_path: Path) -> None:
    failing = tmp_path / "fails.sh"
    failing.write_text("#!/bin/sh\necho 'cannot start: simulated' >&2\nexit 3\n")
    failing.chmod(0o755)
    t0 = time.monotonic()
    with pytest.raises(daemon.DaemonError, match="simulated"):
        daemon.ensure_running(settings, timeout=1.5, argv=[str(failing)])
    assert time.monotonic() - t0 < 4


async def test_sigterm_mid_stream_lets_the_stream_finish(upstream, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    text = "streamed slowly " * 20
    upstream.script = [Turn(text=text, event_delay=0.06)]
    env = cli_env(CIPX_UPSTREAM_URL=upstream.url, CIPX_SHUTDOWN_GRACE="20")
    started = await asyncio.to_thread(cli, "ensure-running", env=env)
    assert started.returncode == 0, started.stderr
    live = daemon.probe(settings)
    body = {"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    received = bytearray()
    async with aiohttp.ClientSession() as client:
        async with client.post(
            f"http://127.0.0.1:{live.port}/v1/messages", json=body, headers={"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
        ) as resp:
            assert resp.status == 200
            received += await resp.content.readany()
            stopping = asyncio.create_task(asyncio.to_thread(daemon.stop, settings, 30.0))
            await asyncio.sleep(0.3)
            assert not stopping.done(), "stop must wait for the stream"
            # A new connection is refused while the stream drains.
            with pytest.raises(aiohttp.ClientError):
                async with client.get(f"http://127.0.0.1:{live.port}/_cipx/health", timeout=aiohttp.ClientTimeout(total=2)):
                    pass
            async for chunk in resp.content.iter_any():
                received += chunk
    result = await stopping
    assert result.was_running and not result.forced
    events = [json.loads(line[5:]) for line in received.decode().splitlines() if line.startswith("data:")]
    assert events[-1]["type"] == "message_stop"
    assert "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta") == text
    # The call was captured and flushed to the spool before the process exited.
    spool = Spool(connect(settings.spool_path))
    try:
        (call,) = spool.calls()
        assert call.outcome == "complete"
    finally:
        spool.close()
