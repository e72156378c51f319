"""Capture work in a child process, so it never competes with the proxy for the GIL.

Building, attributing and storing a call costs milliseconds of CPU per call —
several times what relaying it costs. In the gateway's own process that work
would delay the event loop (CPython runs one thread at a time); in a child it
runs on another core. The parent sends batches of finished calls over the child's stdin: for each
call, where the journal already wrote it (the child reads it from the file, so
bodies are not piped a second time), or the journal frame itself for a call
never journaled. The child stores each batch in
one transaction (the same chain, from :mod:`~opik_cipx.capture.pipeline`, that the
in-process path uses) and answers on stdout with the stored Exchanges minus their bytes, which
the parent's after-commit stages (metrics, shipper wake-up) read.

Once no batch has come for ``RETIRE_SECONDS`` the child is ended, and the next batch
starts a fresh one: an idle child is most of a second process's footprint (its imports,
its caches and whatever the last burst left in its heap), and a fresh start costs about
0.4 s of CPU at the lowest priority, off the proxy's path.

If the child dies, the batch it held is retried once on a fresh child; if that
dies too, :class:`WorkerDied` tells the sink to bisect the batch down to the one
call to blame (see :mod:`~opik_cipx.capture.sink`). Calls are confirmed in the
journal only once stored, so nothing is lost either way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from ..attribute.analysis import Captured
from ..model import Exchange
from ..proxy import journal
from ..proxy.busy import BusyFlag
from ..proxy.heap import IDLE_TRIM_SECONDS, free_large_buffers_at_once, give_back_freed_memory
from ..proxy.recorder import Recorder
from ..settings_view import CaptureSettings, SettingsView
from .stages import Failure, PoisonBatch, store_batch

log = logging.getLogger(__name__)

_LEN = struct.Struct(">I")
# A batch item: kind, then for _REF the frame's offset and length in the journal and the call id.
_KIND = struct.Struct(">B")
_REF_AT = struct.Struct(">QI32s")
_INLINE, _REF = 0, 1


# A child that has had no batch this long is ended (see the module docstring). Claude Code
# sends its calls seconds apart within a turn; a longer pause is the user reading or typing.
RETIRE_SECONDS = 30.0


class WorkerError(RuntimeError):
    """The worker died or answered something unreadable."""


class WorkerDied(WorkerError, PoisonBatch):
    """The worker died on the same batch twice: the sink bisects it to find the call to blame."""


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



class JournalRefError(ValueError):
    """A call was not where the parent said the journal holds it: the parent resends it inline."""


class _JournalReader:
    """The journal file, opened read-only on first use and again after a failed read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def read(self, offset: int, length: int, call_id: str) -> Recorder:
        for attempt in (1, 2):
            try:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_RDONLY)
                return journal.read_at(self._fd, offset, length, call_id)
            except (OSError, ValueError, EOFError, pickle.UnpicklingError) as exc:
                self.close()
                if attempt == 2:
                    raise JournalRefError(str(exc)) from exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_batch(inp: BinaryIO, frames: _JournalReader) -> list[Recorder] | JournalRefError | None:
    """A count, then that many items; None at EOF. A bad journal reference is returned, after
    the whole batch has been read off the pipe, so the stream stays in step."""
    head = inp.read(_LEN.size)
    if len(head) < _LEN.size:
        return None
    batch: list[Recorder] = []
    failed: JournalRefError | None = None
    for _ in range(_LEN.unpack(head)[0]):
        kind = inp.read(_KIND.size)
        if not kind:
            return None
        if _KIND.unpack(kind)[0] == _REF:
            ref = inp.read(_REF_AT.size)
            if len(ref) < _REF_AT.size:
                return None
            offset, length, call_id = _REF_AT.unpack(ref)
            if failed is None:
                try:
                    batch.append(frames.read(offset, length, call_id.decode("ascii")))
                except JournalRefError as exc:
                    failed = exc
            continue
        payload = _read_frame(inp)
        if payload is None:
            return None
        batch.append(journal.load(payload))
    return failed if failed is not None else batch


def without_bodies(ex: Exchange) -> Exchange:
    """What the parent's after-commit stages need of a stored call: everything but the bytes."""
    return dataclasses.replace(ex, request_body=b"", response_body=b"")


def serve(inp: BinaryIO, out: BinaryIO) -> int:
    """The child's loop: batches in on ``inp``, stored calls out on ``out``, until EOF."""
    from ..pricing import PriceTable, PricingFileError
    from ..store.sessions import SessionTable
    from ..store.spool import Spool, connect
    from .pipeline import capture_chain

    init = _read_frame(inp)
    if init is None:
        return 0
    # The parent's own values (validated there), field by field: the child sees exactly what
    # it sees, and never imports pydantic (see settings_view).
    settings = SettingsView(**pickle.loads(init))  # noqa: S301 - our parent's pipe
    spool = Spool(connect(settings.spool_path))
    try:
        prices: PriceTable | None = PriceTable.load(settings.pricing_file)
    except PricingFileError as exc:
        log.error("ignoring pricing overrides: %s", exc)
        prices = PriceTable.builtin()
    sessions = SessionTable(spool.conn)
    frames = _JournalReader(settings.journal_path)
    try:
        flag: BusyFlag | None = BusyFlag(settings.busy_flag_path, write=False)
    except OSError as exc:
        log.warning("no busy flag (%s): capturing without waiting for lulls", exc)
        flag = None
    chain = capture_chain(
        settings, lambda: prices, lambda: sessions, before_build=flag.wait_for_lull if flag is not None else None
    )

    # Once no batch has come for a while, freed heap goes back to the kernel: a burst of 1 MB
    # bodies otherwise leaves the worker at its peak footprint until the next burst.
    trim = _IdleTrim(IDLE_TRIM_SECONDS)
    try:
        while (batch := _read_batch(inp, frames)) is not None:
            trim.cancel()
            if isinstance(batch, JournalRefError):
                _write_frame(out, pickle.dumps({"resend_inline": str(batch)}, protocol=pickle.HIGHEST_PROTOCOL))
                continue
            failures: list[Failure] = []
            try:
                done = store_batch(spool, _consumed(batch), _releasing(chain.build), chain.stages, failures,
                                   keep=lambda item: Captured(without_bodies(item.exchange)), committed=chain.committed)
                reply: dict[str, Any] = {
                    "stored": [item.exchange for item in done],
                    "failures": [(where, f"{type(exc).__name__}: {exc}") for where, exc in failures],
                }
            except Exception as exc:  # noqa: BLE001 - e.g. disk full: the parent keeps the journal
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            _write_frame(out, pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
            trim.arm()
    finally:
        trim.cancel()
        frames.close()
        if flag is not None:
            flag.close()
        spool.close()
    return 0


def _releasing(build: Callable[[Recorder], Captured]) -> Callable[[Recorder], Captured]:
    """``build``, then drop the call's bytes: this process's copy, read from the journal (the
    parent keeps its own for a retry). The Exchange holds what the stages store, so a large
    response is not held twice while they run."""

    def built(rec: Recorder) -> Captured:
        try:
            return build(rec)
        finally:
            rec.release()

    return built


def _consumed(batch: list[Recorder]) -> Iterator[Recorder]:
    """The batch's calls one by one, each let go of once taken: stored calls' bodies are garbage
    as soon as their stages are done, not at the end of the batch."""
    batch.reverse()
    while batch:
        yield batch.pop()


class _IdleTrim:
    """``malloc_trim`` once the worker has been idle ``seconds``: a timer re-armed after each batch."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._timer: threading.Timer | None = None

    def arm(self) -> None:
        self.cancel()
        self._timer = threading.Timer(self.seconds, give_back_freed_memory)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def worker_argv() -> list[str]:
    if getattr(sys, "frozen", False):
        return [sys.executable, "capture-worker"]
    return [sys.executable, "-m", "opik_cipx.cli", "capture-worker"]


class RemoteFailure(Exception):
    """A stage failed in the worker; its message says where and why."""


class WorkerProcess:
    """The parent's side: one child, one batch at a time, restarted when it dies.

    Bodies are large, so the parent does not copy them again: a journaled call is
    sent as its place in the journal file. A dedicated thread writes each batch
    and reads the answer, off the event loop and without the GIL.
    """

    def __init__(
        self, settings: CaptureSettings, argv: list[str] | None = None, journal: journal.Journal | None = None,
        retire_after: float | None = RETIRE_SECONDS,
    ) -> None:
        self._argv = argv or worker_argv()
        self._settings = pickle.dumps(dataclasses.asdict(SettingsView.of(settings)), protocol=pickle.HIGHEST_PROTOCOL)
        self._log_path = settings.logs_dir / "capture-worker.log"
        self._journal = journal
        self._proc: subprocess.Popen[bytes] | None = None
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cipx-worker-io")
        self.restarts = 0
        self.retired = 0  # children ended for being idle (not counted as restarts)
        self.busy = BusyFlag(settings.busy_flag_path, write=True)
        self._retire_after = retire_after
        self._retire: asyncio.TimerHandle | None = None

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
        journal.write_all(self._proc.stdin.fileno(), [_LEN.pack(len(self._settings)), self._settings])

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._io, self._start)

    async def store(self, batch: list[Recorder]) -> tuple[list[Captured], list[Failure]]:
        loop = asyncio.get_running_loop()
        if self._retire is not None:
            self._retire.cancel()
            self._retire = None
        try:
            reply = await loop.run_in_executor(self._io, self._roundtrip, batch)
        finally:
            if self._retire_after is not None:
                self._retire = loop.call_later(self._retire_after, self._retire_idle)
        if "error" in reply:
            raise WorkerError(reply["error"])
        done = [Captured(ex) for ex in reply["stored"]]
        failures: list[Failure] = [(where, RemoteFailure(msg)) for where, msg in reply["failures"]]
        return done, failures

    def _retire_idle(self) -> None:
        """No batch for a while: end the child. Through the I/O thread, so it never overlaps a
        batch; one sent after it simply finds no child and starts one, as at the first call."""
        self._retire = None
        try:
            self._io.submit(self._end_idle)
        except RuntimeError:  # shut down: stop() ends the child
            pass

    def _end_idle(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._stop(timeout=10.0)
            self.retired += 1

    def _roundtrip(self, batch: list[Recorder]) -> dict[str, Any]:
        if self._journal is not None and not all(rec.journaled for rec in batch):
            self._journal.flush()  # the journal thread has written every call in the batch
        items = [_item(rec) for rec in batch]
        for attempt in (1, 2):
            if self._proc is None or self._proc.poll() is not None:
                if self._proc is not None:
                    self.restarts += 1
                    log.error("capture worker exited (%s); starting a new one", self._proc.returncode)
                    self._kill()  # reaps it and closes its pipes
                self._start()
            try:
                reply = self._exchange(items)
                if "resend_inline" in reply:
                    # The child could not read what we said the journal holds: send the calls whole.
                    log.warning("capture worker: %s; sending the batch inline", reply["resend_inline"])
                    items, lost = self._inline_batch(batch)
                    reply = self._exchange(items) if items else {"stored": [], "failures": []}
                    reply["failures"] = [*reply.get("failures", []), *lost]
                return reply
            except (WorkerError, OSError) as exc:
                if attempt == 2:
                    raise WorkerDied(f"capture worker failed twice on this batch: {exc}") from exc
                self._kill()
        raise AssertionError("unreachable")

    def _inline_batch(self, batch: list[Recorder]) -> tuple[list[list[bytes]], list[tuple[str, str]]]:
        """Each call's frame, read back from the journal here, else from memory if still held;
        with the calls neither has any more (reported as failures, never stored half-empty)."""
        items: list[list[bytes]] = []
        lost: list[tuple[str, str]] = []
        for rec in batch:
            whole = rec
            if rec.frame is not None and self._journal is not None:
                try:
                    whole = self._journal.read_back(rec)
                except (OSError, ValueError, EOFError, pickle.UnpicklingError) as exc:
                    if rec.released:
                        lost.append(("journal", f"call {rec.id} is no longer in the journal: {exc}"))
                        continue
            items.append(_inline(journal.dump(whole)))
        return items, lost

    def _exchange(self, items: list[list[bytes]]) -> dict[str, Any]:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        journal.write_all(proc.stdin.fileno(), [_LEN.pack(len(items)), *(part for item in items for part in item)])
        head = _read_exactly(proc.stdout.fileno(), _LEN.size)
        payload = _read_exactly(proc.stdout.fileno(), _LEN.unpack(head)[0])
        reply: dict[str, Any] = pickle.loads(payload)  # noqa: S301 - our child's pipe
        return reply

    def _kill(self) -> None:
        """End the child if it still runs, and close our ends of its pipes."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()

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
        if self._retire is not None:
            self._retire.cancel()
            self._retire = None
        self.busy.set(False)  # nothing is being forwarded any more: finish without waiting
        await asyncio.get_running_loop().run_in_executor(self._io, self._stop, timeout)
        self.busy.close()
        self._io.shutdown(wait=True)


def _item(rec: Recorder) -> list[bytes]:
    if rec.frame is not None:
        offset, length = rec.frame
        return [_KIND.pack(_REF), _REF_AT.pack(offset, length, rec.id.encode("ascii"))]
    return _inline(journal.dump(rec))


def _inline(frame: bytes) -> list[bytes]:
    return [_KIND.pack(_INLINE), frame]  # dump() frames carry their own length prefix


def _read_exactly(fd: int, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = os.read(fd, size - len(buf))
        if not chunk:
            raise WorkerError("capture worker closed its output")
        buf += chunk
    return bytes(buf)


def background() -> None:
    """Run only on CPU time nothing else wants: the proxy (and Claude Code) always go first.

    Under a flood the worker falls behind rather than slowing calls down; the
    journal keeps what waits. SCHED_IDLE where Linux offers it, else the lowest nice.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return
    except (AttributeError, OSError):
        pass
    try:
        os.nice(19)
    except OSError:
        pass


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s capture-worker: %(message)s")
    background()
    free_large_buffers_at_once()
    return serve(sys.stdin.buffer, sys.stdout.buffer)
