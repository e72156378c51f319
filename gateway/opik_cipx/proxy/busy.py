"""Whether the proxy is forwarding a call right now, for capture work to wait on.

Capture CPU is kept in the lulls between calls: the in-process sink waits on an
asyncio event, the capture worker process on :class:`BusyFlag`, one byte of
shared memory the gateway flips without a syscall.
"""

from __future__ import annotations

import mmap
import os
import time
from pathlib import Path

from .recorder import Recorder

# A finished call waits at most this long (from its end) for the proxy to go quiet before
# capture starts on it: under steady traffic every call is still captured within seconds.
MAX_DEFER = 3.0


class BusyFlag:
    """One shared byte: 1 while the proxy is forwarding a call.

    The worker checks it before each call it captures and waits while it is set,
    so capture CPU lands between calls; SCHED_IDLE alone still let it slow calls on
    a small machine (shared caches, cores). Shared memory: setting it costs no syscall.
    """

    def __init__(self, path: Path, *, write: bool) -> None:
        flags = os.O_RDWR | os.O_CREAT if write else os.O_RDONLY
        fd = os.open(path, flags, 0o600)
        try:
            if write:
                os.ftruncate(fd, 1)
            self._map = mmap.mmap(fd, 1, prot=mmap.PROT_READ | (mmap.PROT_WRITE if write else 0))
        finally:
            os.close(fd)

    def set(self, busy: bool) -> None:
        self._map[0] = 1 if busy else 0

    @property
    def busy(self) -> bool:
        return self._map[0] == 1

    def wait_for_lull(self, rec: Recorder, max_defer: float = MAX_DEFER) -> None:
        deadline = (rec.t_end or time.perf_counter()) + max_defer
        while self.busy and time.perf_counter() < deadline:
            time.sleep(0.002)

    def close(self) -> None:
        self._map.close()
