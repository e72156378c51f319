"""Keeping exactly one gateway alive in the background.

Three files in ``$CIPX_HOME`` carry the state:

* ``gateway.lock`` -- an exclusive ``flock`` (via filelock) that the gateway
  process takes before it binds and keeps for its whole life: the descriptor
  stays open, so the kernel releases it only when the process dies, however it
  dies. "Is a gateway alive?" is first of all "is this lock held?".
* ``gateway.pid`` -- written *after* the lock is taken (so a contender never
  truncates it): ``"<pid> <start ticks> <create time>"``. The start ticks (Linux
  ``/proc/<pid>/stat`` field 22) and psutil's create time tell a live gateway
  from an unrelated process that inherited a reused pid. The plugin's launcher
  reads the same line from sh to skip Python on the keep-alive path.
* ``start.lock`` -- serialises callers of :func:`ensure_running`, so ten hooks
  firing at once spawn one process. Even without it, a second gateway cannot
  exist: it would fail to take ``gateway.lock`` and exit.

Probes never take the exclusive lock themselves (a prober holding it for a
moment would look like a gateway to everyone else): they try a *shared* lock,
which succeeds only while nobody holds the exclusive one, and drop it at once.
"""

from __future__ import annotations

import errno
import fcntl
import http.client
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import filelock
import psutil

from ..config import Settings, ensure_home

log = logging.getLogger(__name__)

LOG_NAME = "cipx.log"
LOG_ROTATE_BYTES = 16 * 1024 * 1024
HEALTH_PATH = "/_cipx/health"


class DaemonError(RuntimeError):
    """The gateway could not be started or stopped within its bound."""


@dataclass(frozen=True)
class Paths:
    lock: Path
    pidfile: Path
    start_lock: Path
    port_file: Path
    log: Path

    @classmethod
    def of(cls, settings: Settings) -> Paths:
        home = settings.home
        return cls(
            lock=home / "gateway.lock",
            pidfile=home / "gateway.pid",
            start_lock=home / "start.lock",
            port_file=settings.port_file,
            log=settings.logs_dir / LOG_NAME,
        )


# --- identifying a process beyond its pid -----------------------------------------------------


def start_ticks(pid: int) -> str | None:
    """Field 22 of ``/proc/<pid>/stat`` (start time in clock ticks since boot); None off Linux."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    # comm (field 2) may hold spaces and parens: split after the last ')'.
    rest = raw.rsplit(")", 1)[-1].split()
    return rest[19] if len(rest) > 19 else None


@dataclass(frozen=True)
class PidRecord:
    pid: int
    start_ticks: str  # "-" where /proc is unavailable
    create_time: float

    @classmethod
    def of_current_process(cls) -> PidRecord:
        pid = os.getpid()
        return cls(pid=pid, start_ticks=start_ticks(pid) or "-", create_time=psutil.Process(pid).create_time())

    def render(self) -> str:
        return f"{self.pid} {self.start_ticks} {self.create_time:.3f}\n"

    @classmethod
    def parse(cls, text: str) -> PidRecord | None:
        parts = text.split()
        if len(parts) != 3:
            return None
        try:
            return cls(pid=int(parts[0]), start_ticks=parts[1], create_time=float(parts[2]))
        except ValueError:
            return None

    def is_alive(self) -> bool:
        """The recorded process still exists *and* is the same process (pid reuse is not life)."""
        try:
            proc = psutil.Process(self.pid)
            created: float = proc.create_time()  # psutil is untyped: say what it returns
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return False
        if self.start_ticks != "-":
            ticks = start_ticks(self.pid)
            if ticks is not None:
                return ticks == self.start_ticks
        return abs(created - self.create_time) < 0.05


def read_pidfile(path: Path) -> PidRecord | None:
    try:
        return PidRecord.parse(path.read_text())
    except (OSError, UnicodeDecodeError):
        return None


def read_port(path: Path) -> int | None:
    try:
        port = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return port if 0 < port < 65536 else None


def lock_is_free(path: Path) -> bool:
    """True when nobody holds the exclusive gateway lock; never takes it exclusively."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


# --- liveness -----------------------------------------------------------------------------------


class State(StrEnum):
    RUNNING = "running"  # lock held by the process the pidfile names, verified by create time
    STOPPED = "stopped"  # lock free: whatever the pidfile says is stale
    UNVERIFIED = "unverified"  # lock held, but the pidfile is missing or names another process


@dataclass(frozen=True)
class Liveness:
    state: State
    record: PidRecord | None
    port: int | None
    stale_pidfile: bool = False

    @property
    def alive(self) -> bool:
        return self.state is State.RUNNING

    @property
    def pid(self) -> int | None:
        return self.record.pid if self.record is not None else None


def probe(settings: Settings) -> Liveness:
    paths = Paths.of(settings)
    record = read_pidfile(paths.pidfile)
    port = read_port(paths.port_file)
    if lock_is_free(paths.lock):
        return Liveness(State.STOPPED, None, None, stale_pidfile=record is not None)
    if record is not None and record.is_alive():
        return Liveness(State.RUNNING, record, port)
    return Liveness(State.UNVERIFIED, record, port)


def get_json(port: int, path: str, timeout: float = 1.0) -> dict[str, Any] | None:
    """GET an admin route on loopback; None when nothing (or not a gateway) answers in time."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        resp = conn.getresponse()
        body = resp.read(4 * 1024 * 1024)
        if resp.status != 200:
            return None
        data = json.loads(body)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def answering(live: Liveness, timeout: float = 1.0) -> bool:
    """The verified gateway answers on the port it wrote, as itself (not a stale port's squatter)."""
    if not live.alive or live.port is None:
        return False
    info = get_json(live.port, HEALTH_PATH, timeout)
    return info is not None and info.get("pid") == live.pid


# --- the gateway's side -------------------------------------------------------------------------


class GatewayLock:
    """The exclusive lock a gateway takes before binding and holds until it exits."""

    def __init__(self, settings: Settings) -> None:
        self.paths = Paths.of(settings)
        self._lock = filelock.FileLock(self.paths.lock, mode=0o600, thread_local=False)
        self.record: PidRecord | None = None

    def acquire(self, timeout: float) -> bool:
        """Take the lock within ``timeout`` seconds (probers may hold a shared lock for an instant)."""
        try:
            self._lock.acquire(timeout=timeout, poll_interval=0.02)
        except filelock.Timeout:
            return False
        self.record = PidRecord.of_current_process()
        _write_atomic(self.paths.pidfile, self.record.render())
        return True

    def release(self) -> None:
        if not self._lock.is_locked:
            return
        # Remove the pidfile while still holding the lock, so no new gateway's pidfile is hit.
        current = read_pidfile(self.paths.pidfile)
        if current is not None and current == self.record:
            try:
                self.paths.pidfile.unlink()
            except FileNotFoundError:
                pass
        self._lock.release(force=True)


# --- starting -------------------------------------------------------------------------------------


def daemon_argv() -> list[str]:
    """The command that runs the gateway as the daemon: the frozen binary, or this interpreter."""
    if getattr(sys, "frozen", False):
        return [sys.executable, "proxy", "--daemon"]
    return [sys.executable, "-m", "opik_cipx.cli", "proxy", "--daemon"]


def _rotate(log_path: Path) -> None:
    try:
        if log_path.stat().st_size > LOG_ROTATE_BYTES:
            os.replace(log_path, log_path.with_name(log_path.name + ".1"))
    except FileNotFoundError:
        pass


def spawn(settings: Settings, argv: list[str] | None = None) -> int | None:
    """Double fork and exec the gateway, detached from our session, stdio to the log.

    The first child calls setsid and forks again, then exits at once, so the
    gateway is reparented to init, has no controlling terminal and cannot get
    one. Nothing but the exec happens in the grandchild (the caller may have
    threads), and the caller reaps the first child so no zombie is left behind.
    Returns the gateway's pid (passed up through a pipe), so a caller can tell at
    once when it exited instead of waiting for it to answer.
    """
    paths = Paths.of(settings)
    ensure_home(settings)
    _rotate(paths.log)
    argv = argv or daemon_argv()
    log_fd = os.open(paths.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    pid_r, pid_w = os.pipe()
    try:
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the forked child
            try:
                os.close(pid_r)
                os.setsid()
                grandchild = os.fork()
                if grandchild != 0:
                    os.write(pid_w, str(grandchild).encode())
                    os._exit(0)
                os.close(pid_w)
                os.chdir("/")
                os.umask(0o077)
                os.dup2(null_fd, 0)
                os.dup2(log_fd, 1)
                os.dup2(log_fd, 2)
                os.execv(argv[0], argv)
            finally:
                os._exit(127)
        os.close(pid_w)
        pid_w = -1
        os.waitpid(child, 0)
        raw = os.read(pid_r, 32)
        return int(raw) if raw.strip().isdigit() else None
    finally:
        os.close(log_fd)
        os.close(null_fd)
        os.close(pid_r)
        if pid_w >= 0:
            os.close(pid_w)


def ensure_running(settings: Settings, timeout: float = 8.0, *, argv: list[str] | None = None) -> Liveness:
    """Return once a verified gateway answers on its port; start one if none is alive.

    Raises :class:`DaemonError` when that does not happen within ``timeout``. The
    daemon builds its own Settings from the environment it inherits from this
    process, as every entry point does: ``settings`` must come from the same one.
    """
    deadline = time.monotonic() + timeout
    live = probe(settings)
    if answering(live):
        return live
    ensure_home(settings)
    starter = filelock.FileLock(Paths.of(settings).start_lock, mode=0o600, thread_local=False)
    try:
        starter.acquire(timeout=max(0.0, deadline - time.monotonic()), poll_interval=0.02)
    except filelock.Timeout:
        raise DaemonError(f"another caller is starting the gateway and it did not finish within {timeout:g}s") from None
    try:
        spawned = False
        child: int | None = None
        while True:
            live = probe(settings)
            if answering(live, timeout=min(1.0, max(0.1, deadline - time.monotonic()))):
                return live
            if live.state is State.STOPPED and not spawned:
                child = spawn(settings, argv)
                spawned = True
            elif live.state is State.STOPPED and child is not None and not _alive(child):
                # It exited before answering (port taken, bad config): say why now, not at the deadline.
                last = last_log_line(settings) or "-"
                raise DaemonError(f"the gateway exited while starting; last log line: {last}")
            if time.monotonic() >= deadline:
                break
            time.sleep(0.03)
    finally:
        starter.release()
    last = last_log_line(settings) or "-"
    raise DaemonError(f"the gateway did not answer within {timeout:g}s ({live.state}); last log line: {last}")


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def last_log_line(settings: Settings) -> str | None:
    path = Paths.of(settings).log
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 4096))
            lines = fh.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return None
    return lines[-1] if lines else None


# --- stopping -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StopResult:
    was_running: bool
    pid: int | None
    forced: bool  # SIGKILL was needed after the graceful bound ran out
    message: str


def stop(settings: Settings, timeout: float | None = None) -> StopResult:
    """SIGTERM the verified gateway and wait for its lock to free (it drains in-flight calls).

    After ``timeout`` (default: the shutdown grace plus 5 s) it is killed. A lock held
    by a process the pidfile does not name is never signalled: that would risk killing
    a stranger.
    """
    bound = settings.shutdown_grace + 5.0 if timeout is None else timeout
    live = probe(settings)
    if live.state is State.STOPPED:
        _clear_stale(settings)
        return StopResult(False, None, False, "not running")
    if live.state is State.UNVERIFIED or live.record is None:
        raise DaemonError("the gateway lock is held by a process the pidfile does not identify; not signalling it")
    pid = live.record.pid
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return StopResult(False, pid, False, "exited before it was signalled")
    if _wait_stopped(settings, bound, live.record):
        return StopResult(True, pid, False, f"stopped pid {pid}")
    if live.record.is_alive():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _wait_stopped(settings, 5.0, live.record)
    _clear_stale(settings)
    return StopResult(True, pid, True, f"pid {pid} did not stop within {bound:g}s and was killed")


def _wait_stopped(settings: Settings, bound: float, record: PidRecord) -> bool:
    """Until the lock is free and the process is gone (callers may replace its binary next)."""
    deadline = time.monotonic() + bound
    lock = Paths.of(settings).lock
    while time.monotonic() < deadline:
        if lock_is_free(lock) and not record.is_alive():
            return True
        time.sleep(0.05)
    return lock_is_free(lock) and not record.is_alive()


def _clear_stale(settings: Settings) -> None:
    """Only with the lock free: a pidfile or port file left by a killed gateway misleads readers."""
    paths = Paths.of(settings)
    if not lock_is_free(paths.lock):
        return
    for path in (paths.pidfile, paths.port_file):
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
