"""Write-ahead journal of finished calls that are not in the spool yet.

Building, analyzing and storing a call takes milliseconds of CPU; a flood of
calls builds a backlog that a ``kill -9`` would lose. So each finished call is
first appended to this file, raw (no parsing), before the bytes that complete its
response are sent: a write to the page cache survives the process being killed.
The spool worker confirms each call once it is committed; when every journaled
call is confirmed the journal is emptied. At start-up, calls still in the file
and missing from the spool are captured again.

Frames: 4-byte big-endian length, then the frame (see ``dump_parts``); a zero
length ends the journal. Once every call in it is stored the journal is rewound
rather than truncated: the next frames overwrite pages the file already has,
which costs a third of writing fresh ones (no block allocation). Each frame
carries the journal's generation, bumped at every rewind, so frames left over
from before a rewind are never read as current, not even behind a torn write.
The file is truncated when it has grown large, at least hourly, and at a clean
stop. It is only ever read back by this module, on this machine, from a 0600
file in the 0700 state directory.
"""

from __future__ import annotations

import logging
import os
import pickle
import struct
import threading
import time
from array import array
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import accumulate
from pathlib import Path
from typing import Any, BinaryIO

from ..model import Outcome
from ..wire.redact import CREDENTIAL_HEADER, credential_kind, is_secret_header
from .recorder import ENDS_TYPE, HeaderList, Recorder

log = logging.getLogger(__name__)

_LEN = struct.Struct(">I")
_GEN = struct.Struct(">Q")
_END = _LEN.pack(0)  # written after every frame: where the journal ends until the next one
# The recorder fields that make a call, besides the bytes; times are perf_counter values,
# used only as differences (an array of doubles since _V4, a list of floats before).
_FIELDS = ("id", "wall_start", "t_start", "method", "path", "status", "response_headers",
           "t_head", "times", "t_end", "forced_outcome", "error", "gateway_status")
# A frame is: total length, then _V4, the journal's generation, the length of the pickled
# fields, the fields, then the request body and the response as raw bytes. The bytes are
# never copied into a pickle: they go to the file straight from the buffers the proxy read
# them into. The fields give the response's piece boundaries as an array of end offsets
# (``chunk_ends``). _V3 frames (a list of piece sizes, ``chunk_sizes``), _V2 frames (no
# generation either) and whole-pickle frames are older layouts, still read.
_V4 = b"\x04"
_V3 = b"\x03"
_V2 = b"\x02"
_PICKLE = 0x80  # the first byte of a pickle: frames written before the raw-bytes layout


def _headers(headers: Any) -> list[tuple[Any, Any]]:
    """Request headers as the proxy read them, credentials left out: they never reach the disk,
    not even in this short-lived file."""
    items = headers.raw() if isinstance(headers, HeaderList) else headers.items()
    kept: list[tuple[Any, Any]] = [(n, v) for n, v in items if not is_secret_header(n)]
    # Only which kind of credential it was survives, so a replayed call is labelled as the live one.
    kind = credential_kind(items)
    as_bytes = bool(kept) and isinstance(kept[0][0], bytes)
    kept.append((CREDENTIAL_HEADER.encode(), kind.encode()) if as_bytes else (CREDENTIAL_HEADER, kind))
    return kept


def _response_headers(headers: tuple[tuple[bytes, bytes], ...]) -> tuple[tuple[bytes, bytes], ...]:
    """The upstream's headers minus what it hands the client as a credential (``set-cookie``, a
    session token, ``www-authenticate``...): the same rule as for requests, before the disk."""
    return tuple((n, v) for n, v in headers if not is_secret_header(n))


def dump_parts(rec: Recorder, generation: int = 0) -> tuple[list[bytes | bytearray], int]:
    """The frame for ``rec`` as buffers to write in order, and its total length."""
    state: dict[str, Any] = {name: getattr(rec, name) for name in _FIELDS}
    # Plain values only: a pickled enum names its module, and modules move between releases.
    if rec.forced_outcome is not None:
        state["forced_outcome"] = rec.forced_outcome.value
    state["request_headers"] = _headers(rec.request_headers)
    state["response_headers"] = _response_headers(rec.response_headers)
    body = rec.body_parts
    state["body_sizes"] = [len(part) for part in body]
    state["chunk_ends"] = rec.ends
    meta = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    size = 1 + _GEN.size + _LEN.size + len(meta) + sum(state["body_sizes"]) + len(rec.response)
    head = _LEN.pack(size) + _V4 + _GEN.pack(generation) + _LEN.pack(len(meta))
    return [head, meta, *body, rec.response], _LEN.size + size


def dump(rec: Recorder) -> bytes:
    return b"".join(dump_parts(rec)[0])


def generation_of(payload: bytes | memoryview) -> int | None:
    """A frame's journal generation; None for the older layouts, which had none."""
    if bytes(payload[:1]) in (_V4, _V3) and len(payload) >= 1 + _GEN.size:
        return int(_GEN.unpack_from(payload, 1)[0])
    return None


def load(payload: bytes | memoryview) -> Recorder:
    """The call in one frame's payload (a memoryview of a larger read is taken without a copy)."""
    response = bytearray()
    ends: array[int] | None = None
    chunks: list[bytes] | None = None
    if payload[0] == _PICKLE:
        state = pickle.loads(payload)  # noqa: S301 - our own 0600 file, written by this module
        body, chunks = state["body"], state["chunks"]
    else:
        version = bytes(payload[:1])
        if version in (_V4, _V3):
            start = 1 + _GEN.size
        elif version == _V2:
            start = 1
        else:
            raise ValueError(f"unknown journal frame version {version!r}")
        (meta_len,) = _LEN.unpack_from(payload, start)
        pos = start + _LEN.size + meta_len
        state = pickle.loads(payload[start + _LEN.size : pos])  # noqa: S301 - our own 0600 file
        view = memoryview(payload)
        body_len = sum(state["body_sizes"])
        body = bytes(view[pos : pos + body_len])
        pos += body_len
        if version == _V4:
            ends = state["chunk_ends"]
        else:
            ends = array(ENDS_TYPE, accumulate(state["chunk_sizes"]))
        described = pos + (ends[-1] if ends else 0)
        if described != len(payload):
            raise ValueError(f"journal frame holds {len(payload)} bytes, its fields describe {described}")
        response = bytearray(view[pos:])
    rec = Recorder.__new__(Recorder)
    for name in _FIELDS:
        setattr(rec, name, state[name])
    if isinstance(rec.forced_outcome, str):
        rec.forced_outcome = Outcome(rec.forced_outcome)
    times = state["times"]
    rec.times = times if isinstance(times, array) else array("d", times)
    rec.body = body
    if chunks is not None:
        rec.chunks = chunks
    else:
        assert ends is not None
        rec.response, rec.ends = response, ends
    rec.frame = None
    rec.journaled = False
    rec.released = False
    rec.request_headers = HeaderList(state["request_headers"])
    return rec


def read_at(fd: int, offset: int, length: int, expect_id: str) -> Recorder:
    """The call journaled at ``offset``; raises ValueError unless it is the one expected."""
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise ValueError(f"journal frame at {offset} is short ({len(data)} of {length} bytes)")
    (size,) = _LEN.unpack_from(data)
    if size != length - _LEN.size:
        raise ValueError(f"journal frame at {offset} has length {size}, expected {length - _LEN.size}")
    rec = load(memoryview(data)[_LEN.size :])
    if rec.id != expect_id:
        raise ValueError(f"journal frame at {offset} holds call {rec.id}, expected {expect_id}")
    return rec


def read_frames(path: Path) -> Iterator[bytes]:
    """Every current frame, up to the end mark, read one at a time (the file may be large: a
    journal the last run could not rewind). A torn last frame (killed mid-write) is ignored,
    and so is everything from a frame of another generation on: the rest of a rewound journal."""
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return
    with fh:
        for _, _, payload in _frames(fh, str(path)):
            assert payload is not None
            yield payload


# Enough of a frame to read its layout version and generation.
_PREFIX = 1 + _GEN.size


def _frames(fh: BinaryIO, where: str, *, payloads: bool = True) -> Iterator[tuple[int, int, bytes | None]]:
    """(offset, payload length, payload) of each current frame in ``fh``; with ``payloads``
    False only the frames' places are read (the payload is None), not their bytes."""
    total = os.fstat(fh.fileno()).st_size
    pos = 0
    current: int | None = None
    while pos + _LEN.size <= total:
        fh.seek(pos)
        (size,) = _LEN.unpack(fh.read(_LEN.size))
        if size == 0:
            return  # the end mark
        start = pos + _LEN.size
        if start + size > total:
            log.warning("journal %s: ignoring a torn last record (%d bytes)", where, total - pos)
            return
        payload = fh.read(size) if payloads else None
        head = payload if payload is not None else fh.read(min(size, _PREFIX))
        generation = generation_of(head)
        if current is None:
            current = generation  # older layouts (None) can only come first
        elif generation != current:
            return  # left over from before the last rewind
        yield pos, size, payload
        pos = start + size


# Truncated rather than rewound past this size, or when the last truncate is older than
# TRUNCATE_EVERY seconds: stale frames neither hold much disk nor linger for long.
REWIND_LIMIT = 64 * 1024**2
TRUNCATE_EVERY = 3600.0


class Journal:
    """Appends finished calls; rewinds once all are confirmed stored."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        # Where the next frame goes, and the generation frames are stamped with. A file that
        # already holds frames (normally take_over() has moved it aside) is continued.
        self._end = 0
        self._generation = int.from_bytes(os.urandom(_GEN.size), "big")
        with open(self._fd, "rb", closefd=False) as fh:
            for offset, size, _ in _frames(fh, str(path), payloads=False):
                self._end = offset + _LEN.size + size
                fh.seek(offset + _LEN.size)
                self._generation = generation_of(fh.read(_PREFIX)) or self._generation
        self._truncated_at = time.monotonic()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cipx-journal")
        self._lock = threading.Lock()
        # Held across "where does the frame land" and the write, and across "is everything
        # stored" and the truncate: appends come from the loop (seal) and the journal thread.
        self._file_lock = threading.Lock()
        self._pending: set[str] = set()  # journaled, not yet confirmed stored
        self._stored_first: set[str] = set()  # confirmed before their append ran: skip it
        self.appended = 0
        self.errors = 0
        self.last_error: str | None = None

    def append(self, rec: Recorder) -> None:
        """Hot-path side: hand the recorder to the journal thread. Never blocks, never raises."""
        try:
            self._thread.submit(self._append, rec)
        except RuntimeError:  # executor shut down: the gateway is stopping
            pass

    def seal(self, rec: Recorder) -> None:
        """Journal a call now, on the caller's thread: the proxy calls this before the bytes that
        complete a response. Never raises.

        Inline rather than on the journal thread: the write lands in the page cache (no fsync;
        kill -9 is what it guards against), about 30-150 us for a 200 KB call, while handing it
        to a thread and waiting cost more CPU than the write itself in thread wake-ups and GIL
        hand-offs.
        """
        rec.finish()
        rec.journaled = True
        self._append(rec)

    def _append(self, rec: Recorder) -> None:
        with self._lock:
            if rec.id in self._stored_first:
                self._stored_first.discard(rec.id)
                return
            self._pending.add(rec.id)
        try:
            with self._file_lock:
                parts, size = dump_parts(rec, self._generation)
                offset = self._end
                write_all(self._fd, [*parts, _END], offset)
                self._end = offset + size
            rec.frame = (offset, size)
            self.appended += 1
        except Exception as exc:  # noqa: BLE001 - a full disk must not break capture itself
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("journal append failed: %s", exc)

    def confirm(self, ids: list[str]) -> None:
        """The spool committed these calls: they need no replay."""
        with self._lock:
            for exchange_id in ids:
                if exchange_id in self._pending:
                    self._pending.discard(exchange_id)
                else:
                    self._stored_first.add(exchange_id)
            empty = not self._pending
        if empty:
            try:
                self._thread.submit(self._truncate_if_done)
            except RuntimeError:
                pass

    def _truncate_if_done(self) -> None:
        # Under the file lock no append can interleave: empty now means empty on disk too.
        with self._file_lock:
            with self._lock:
                if self._pending:
                    return
            if self._end == 0:
                return
            now = time.monotonic()
            if self._end > REWIND_LIMIT or now - self._truncated_at > TRUNCATE_EVERY:
                os.ftruncate(self._fd, 0)
                self._truncated_at = now
            else:
                os.pwrite(self._fd, _END, 0)  # empty from here on; stale frames stay unreadable
            self._end = 0
            self._generation = (self._generation + 1) % 2 ** (8 * _GEN.size)

    def read_back(self, rec: Recorder) -> Recorder:
        """The call as journaled (``rec.frame``); raises OSError or ValueError if the file lost it."""
        if rec.frame is None:
            raise ValueError(f"call {rec.id} was never journaled")
        fd = os.open(self.path, os.O_RDONLY)
        try:
            return read_at(fd, *rec.frame, rec.id)
        finally:
            os.close(fd)

    def flush(self) -> None:
        """Wait for every append handed over so far (tests, shutdown)."""
        self._thread.submit(lambda: None).result()

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        with self._lock:
            empty = not self._pending
        if empty:
            os.ftruncate(self._fd, 0)
        os.close(self._fd)


def write_all(fd: int, parts: Sequence[bytes | bytearray | memoryview], offset: int | None = None) -> None:
    """Write every byte of ``parts`` in order: at ``offset``, else at the fd's position."""
    pending: list[bytes | bytearray | memoryview] = [p for p in parts if p]
    while pending:
        batch = pending[:512]  # IOV_MAX is 1024 on Linux; stay well under it
        n = os.writev(fd, batch) if offset is None else os.pwritev(fd, batch, offset)
        if offset is not None:
            offset += n
        if n == sum(map(len, batch)):  # the usual case: no per-buffer bookkeeping
            pending = pending[len(batch):]
            continue
        done = 0
        while n >= len(pending[done]):
            n -= len(pending[done])
            done += 1
        pending = pending[done:]
        pending[0] = memoryview(pending[0])[n:]


def take_over(path: Path) -> Iterator[Recorder]:
    """At start-up: the calls a previous process journaled but may not have stored.

    The file is renamed aside at once (before this returns), so a crash while replaying
    leaves it for the next start; its calls are then read one at a time as the caller
    iterates, never the whole file at once. The caller deletes the files
    (``finish_replay``) once every call in them has been handed to the capture again
    (which journals them anew). A previous replay that was interrupted is kept, and read
    first: its file and this one are separate journals, each with its own generation.
    """
    held = _replay_files(path)
    if path.exists() and path.stat().st_size:
        aside = path.with_suffix(path.suffix + ".replay")
        if held:
            aside = aside.with_suffix(f"{aside.suffix}.{len(held)}")
        os.replace(path, aside)
        held.append(aside)
    return _replay(held)


def _replay_files(path: Path) -> list[Path]:
    """The replay files a start-up left, oldest first: ``.replay``, then ``.replay.1``, ..."""
    first = path.with_suffix(path.suffix + ".replay")
    if not first.exists():
        return []
    out = [first]
    while (more := first.with_suffix(f"{first.suffix}.{len(out)}")).exists():
        out.append(more)
    return out


def _replay(files: list[Path]) -> Iterator[Recorder]:
    for held in files:
        for payload in read_frames(held):
            try:
                yield load(payload)
            except Exception as exc:  # noqa: BLE001 - one bad record must not hide the others
                log.error("journal: skipping an unreadable record: %s", exc)


def finish_replay(path: Path) -> None:
    for held in _replay_files(path):
        held.unlink(missing_ok=True)
