"""Capture work in a child process, so it never competes with the proxy for the GIL.

Building, attributing and storing a call costs milliseconds of CPU per call —
several times what relaying it costs. In the gateway's own process that work
would delay the event loop (CPython runs one thread at a time); in a child it
runs on another core. The parent sends batches of finished calls in the
journal's frame format (a count, then the frames) over the child's stdin; the child stores each batch in
one transaction (the same :func:`~opik_cipx.capture.store_batch` the in-process
path uses) and answers on stdout with a light summary of what it stored, which
the parent's after-commit stages (metrics, shipper wake-up) read.

If the child dies, the batch it held is retried once on a fresh child; calls
are confirmed in the journal only once stored, so nothing is lost either way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from . import journal
from .commands import CommandIndex
from .capture import Captured, Failure, Recorder, prepare, store_attribution, store_batch, store_exchange
from .model import Exchange

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger(__name__)

_LEN = struct.Struct(">I")


class WorkerError(RuntimeError):
    """The worker died or answered something unreadable."""


def _write_frame(out: BinaryIO, payload: bytes) -> None:
    out.write(_LEN.pack(len(payload)) + payload)
    out.flush()


def _read_frame(inp: BinaryIO) -> bytes | None:
    head = inp.read(_LEN.size)
    if len(head) < _LEN.size:
        return None
    (size,) = _LEN.unpack(head)
    payload = inp.read(size)
    if len(payload) < size:
        return None
    return payload


def _read_batch(inp: BinaryIO) -> list[Recorder] | None:
    """A count, then that many journal frames; None at EOF."""
    head = inp.read(_LEN.size)
    if len(head) < _LEN.size:
        return None
    batch = []
    for _ in range(_LEN.unpack(head)[0]):
        payload = _read_frame(inp)
        if payload is None:
            return None
        batch.append(journal.load(payload))
    return batch


def light(ex: Exchange) -> dict[str, Any]:
    """What the parent's after-commit stages need of a stored call: no bodies."""
    data = ex.to_dict()
    data["request_body"] = ""
    data["response_body"] = ""
    return data


def serve(inp: BinaryIO, out: BinaryIO) -> int:
    """The child's loop: batches in on ``inp``, summaries out on ``out``, until EOF."""
    from .config import Settings
    from .pricing import PriceTable, PricingFileError
    from .sessions import SessionTable
    from .shipper import Shipper
    from .spool import Spool, connect

    init = _read_frame(inp)
    if init is None:
        return 0
    # The parent's own Settings, field by field: the child must see exactly what it sees.
    settings = Settings(**pickle.loads(init))  # noqa: S301 - our parent's pipe
    spool = Spool(connect(settings.spool_path))
    try:
        prices: PriceTable | None = PriceTable.load(settings.pricing_file)
    except PricingFileError as exc:
        log.error("ignoring pricing overrides: %s", exc)
        prices = PriceTable.builtin()
    sessions = SessionTable(spool.conn)
    # record() only touches the Spool it is handed; this Shipper never ships.
    spans = Shipper(settings, None, prices=lambda: prices, sessions=lambda: sessions)  # type: ignore[arg-type]
    stages = [store_exchange, store_attribution, spans.record]
    index = CommandIndex(Path(os.path.expanduser("~")))

    def commands_for(session_id: str | None) -> tuple[str, ...]:
        info = sessions.get(session_id) if session_id else None
        return index.names(info.cwd if info is not None else None)

    try:
        while (batch := _read_batch(inp)) is not None:
            failures: list[Failure] = []
            try:
                done = store_batch(spool, batch, lambda rec: prepare(rec, prices, commands_for), stages, failures)
                reply: dict[str, Any] = {
                    "stored": [light(item.exchange) for item in done],
                    "failures": [(where, f"{type(exc).__name__}: {exc}") for where, exc in failures],
                }
            except Exception as exc:  # noqa: BLE001 - e.g. disk full: the parent keeps the journal
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            _write_frame(out, pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
    finally:
        spool.close()
    return 0


def worker_argv() -> list[str]:
    if getattr(sys, "frozen", False):
        return [sys.executable, "capture-worker"]
    return [sys.executable, "-m", "opik_cipx.cli", "capture-worker"]


class RemoteFailure(Exception):
    """A stage failed in the worker; its message says where and why."""


class WorkerProcess:
    """The parent's side: one child, one batch at a time, restarted when it dies.

    Bodies are large, so the parent's copies stay off the event loop: a dedicated
    thread writes each batch with ``os.writev`` (reusing the frames the journal
    thread already serialized) and reads the answer, both releasing the GIL.
    """

    def __init__(self, settings: Settings, argv: list[str] | None = None, journal: journal.Journal | None = None) -> None:
        self._argv = argv or worker_argv()
        self._settings = pickle.dumps(settings.model_dump(), protocol=pickle.HIGHEST_PROTOCOL)
        self._log_path = settings.logs_dir / "capture-worker.log"
        self._journal = journal
        self._proc: subprocess.Popen[bytes] | None = None
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cipx-worker-io")
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> None:
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        with open(self._log_path, "ab") as log_file:
            self._proc = subprocess.Popen(
                self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, env=env, bufsize=0
            )
        assert self._proc.stdin is not None
        _writev(self._proc.stdin.fileno(), [_LEN.pack(len(self._settings)), self._settings])

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._io, self._start)

    async def store(self, batch: list[Recorder]) -> tuple[list[Captured], list[Failure]]:
        reply = await asyncio.get_running_loop().run_in_executor(self._io, self._roundtrip, batch)
        if "error" in reply:
            raise WorkerError(reply["error"])
        done = [Captured(Exchange.from_dict(d)) for d in reply["stored"]]
        failures: list[Failure] = [(where, RemoteFailure(msg)) for where, msg in reply["failures"]]
        return done, failures

    def _roundtrip(self, batch: list[Recorder]) -> dict[str, Any]:
        if self._journal is not None:
            self._journal.flush()  # the journal thread has serialized every call in the batch
        frames = [rec.frame or journal.dump(rec) for rec in batch]
        for rec in batch:
            rec.frame = None  # the serialized copy is only for this trip
        for attempt in (1, 2):
            if self._proc is None or self._proc.poll() is not None:
                if self._proc is not None:
                    self.restarts += 1
                    log.error("capture worker exited (%s); starting a new one", self._proc.returncode)
                self._start()
            try:
                return self._exchange(frames)
            except (WorkerError, OSError) as exc:
                if attempt == 2:
                    raise WorkerError(f"capture worker failed twice: {exc}") from exc
                self._kill()
        raise AssertionError("unreachable")

    def _exchange(self, frames: list[bytes]) -> dict[str, Any]:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        _writev(proc.stdin.fileno(), [_LEN.pack(len(frames)), *frames])
        head = _read_exactly(proc.stdout.fileno(), _LEN.size)
        payload = _read_exactly(proc.stdout.fileno(), _LEN.unpack(head)[0])
        return pickle.loads(payload)  # noqa: S301 - our child's pipe

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def _stop(self, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # EOF: the child ends after its current batch
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill()
        if proc.stdout is not None:
            proc.stdout.close()
        self._proc = None

    async def stop(self, timeout: float = 10.0) -> None:
        await asyncio.get_running_loop().run_in_executor(self._io, self._stop, timeout)
        self._io.shutdown(wait=True)


def _writev(fd: int, parts: list[bytes]) -> None:
    views = [memoryview(p) for p in parts if p]
    while views:
        n = os.writev(fd, views[:512])
        while n and views:
            if n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][n:]
                n = 0


def _read_exactly(fd: int, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = os.read(fd, size - len(buf))
        if not chunk:
            raise WorkerError("capture worker closed its output")
        buf += chunk
    return bytes(buf)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s capture-worker: %(message)s")
    try:
        # Background work: when the machine is busy, the proxy (and Claude Code) go first;
        # the journal keeps whatever waits.
        os.nice(10)
    except OSError:
        pass
    return serve(sys.stdin.buffer, sys.stdout.buffer)
