"""The gateway's use of the C heap: reuse freed buffers while busy, give them back when idle.

glibc only; elsewhere (macOS, musl) both functions do nothing and return False.
"""

from __future__ import annotations

import ctypes
import functools
import gc
from typing import Any

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

# After a burst, how long the proxy must stay idle before freed memory goes back to the kernel.
IDLE_TRIM_SECONDS = 30.0


@functools.cache
def _libc() -> Any:
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory(trim: int = 16 * 1024**2, mmap_at: int = 2 * 1024**2) -> bool:
    """Keep freed heap memory for the next call instead of returning it to the kernel at once.

    Every call allocates and frees its body's buffers (hundreds of KB). With glibc's
    defaults those come from fresh mmap()s or a heap top that is trimmed after each
    burst, so every call faulted in and zeroed new pages: about a sixth of the
    proxy's CPU. Here buffers below ``mmap_at`` come from the heap and up to ``trim``
    bytes of free heap stay mapped. Idle RSS is unchanged. 16 MiB holds what eight 1 MB
    calls in flight need; 64 MiB (until issue 18) left the gateway 20 MiB larger after a
    burst, with no latency difference measured in the same benchmark rounds. A response
    that grows past ``mmap_at`` (a long stream: megabytes) gets a mapping of its own, handed
    back the moment the call is done rather than left as a hole in the heap.

    One malloc arena for every thread: the journal, spool and worker-I/O threads otherwise
    each get an arena whose free memory stays mapped beside the main one's (the gateway was
    77-79 MiB right after ``bench/proxy_bench.py``'s full run with them, 69 with one; the
    threads allocate little, so they hardly ever wait on each other for it). Called before
    any thread starts.
    """
    libc = _libc()
    if libc is None:
        return False
    return (bool(libc.mallopt(_M_ARENA_MAX, 1)) and bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_at))
            and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim)))


def free_large_buffers_at_once(mmap_at: int = 256 * 1024, trim: int = 1024**2) -> bool:
    """The opposite policy, for the capture worker: large buffers get their own mappings,
    unmapped when freed, and free heap above ``trim`` goes back at once.

    The worker builds a call's few large buffers (the frame read from the journal, the
    response body, what the spool compresses) and frees them again; glibc's defaults raise
    the mmap threshold to the largest buffer freed so far, so after the first large call
    they all came from a heap that stayed at the busiest batch's size. Faulting those pages
    in afresh costs the worker about a millisecond per megabyte, at its lowest priority and
    off the proxy's path.
    """
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_at)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim))


def give_back_freed_memory() -> bool:
    """Return free heap pages to the kernel, the middle of the heap included.

    Called once the proxy has been idle a while: a burst of large calls otherwise
    leaves the gateway holding its peak footprint until the next burst. Garbage in
    reference cycles is collected first: an idle process allocates nothing, so the
    cyclic GC would not run by itself, and what it frees is what there is to give back.
    """
    gc.collect()
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
