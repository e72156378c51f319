"""The gateway's heap: freed buffers reused while busy, given back when idle (memory.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

GATEWAY_SRC = Path(__file__).resolve().parent.parent / "gateway"

# Page faults and RSS measured in fresh interpreters: subprocesses, and noisy under load.
pytestmark = pytest.mark.slow

# Minor page faults per burst of eight 200 KB request bodies, allocated and freed.
_BURSTS = f"""
import resource, sys
sys.path.insert(0, {str(GATEWAY_SRC)!r})
if sys.argv[1] == "tuned":
    from opik_cipx.proxy.heap import keep_freed_memory
    assert keep_freed_memory()
for _ in range(3):  # the first bursts size the heap in either mode
    warm = [b"x" * 200_000 for _ in range(8)]
    del warm
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    live = [b"x" * 200_000 for _ in range(8)]
    del live
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 100)
"""


def faults_per_burst(mode: str) -> float:
    # Untuned, glibc moves its mmap threshold as the process frees large chunks, so whether a
    # burst faults depends on the heap's history: 359 faults per burst here, 29 in one CI run.
    # Pinning the threshold at its documented default (128 KiB) makes the baseline the case
    # the tuning exists for, every 200 KB buffer a fresh mmap, in any environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["GLIBC_TUNABLES"] = "glibc.malloc.mmap_threshold=131072"
    out = subprocess.run(
        [sys.executable, "-c", _BURSTS, mode], capture_output=True, text=True, check=True, env=env
    )
    return float(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_body_buffers_are_reused_instead_of_faulted_in_again() -> None:
    # Untuned, each burst's buffers go back to the kernel: every call pays to fault in and
    # zero fresh pages. Tuned, a burst reuses what the last one freed.
    assert faults_per_burst("default") > 100
    assert faults_per_burst("tuned") < 5


# The start of each script below: the gateway's sources importable, and the process's RSS.
_RSS_SCRIPT = f"""
import sys
sys.path.insert(0, {str(GATEWAY_SRC)!r})
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
"""

_PEAK_THEN_IDLE = _RSS_SCRIPT + """
from opik_cipx.proxy.heap import give_back_freed_memory, keep_freed_memory
assert keep_freed_memory()
burst = [b"x" * 1_000_000 for _ in range(64)]  # a burst of large calls
keep = burst[::8]  # a few survive it, pinning the heap's top
del burst
before = rss()
assert give_back_freed_memory()
print(before - rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_after_a_burst_freed_memory_goes_back_to_the_kernel() -> None:
    out = subprocess.run([sys.executable, "-c", _PEAK_THEN_IDLE], capture_output=True, text=True, check=True)
    assert int(out.stdout) > 30 * 1024**2  # most of the 56 MB the burst freed


_WORKER_BURST = _RSS_SCRIPT + """
from opik_cipx.proxy.heap import free_large_buffers_at_once
assert free_large_buffers_at_once()
before = rss()
pins = []
for size in (6_000_000, 5_000_000, 4_000_000):  # the worker's calls, one after another
    burst = [bytearray(size) for _ in range(4)]
    for b in burst:
        b[::4096] = b"x" * len(b[::4096])  # touched, as a body read into it is
    pins.append(bytearray(100_000))  # something small that outlives the call (e.g. SQLite's)
    del burst, b
print(rss() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_worker_s_large_buffers_go_back_when_freed_without_a_trim() -> None:
    out = subprocess.run([sys.executable, "-c", _WORKER_BURST], capture_output=True, text=True, check=True)
    assert int(out.stdout) < 4 * 1024**2  # not the 16-20 MB each call held, pinned below a survivor
