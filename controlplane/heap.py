"""Giving freed heap back to the system after large transient work.

glibc's malloc keeps what is freed for reuse, and returns to the system only the free memory
at the top of a heap. Two moments of the control plane's life free hundreds of megabytes
that it will not need again soon: reading the cluster (every object of a big cluster decoded
from the API server's JSON, then dropped for its projection), and a thousand agents
reconnecting at once (each first request lists every resource the agent holds: 100,000
names parsed, compared, dropped). Without a trim that memory stays resident (counted in
RSS, the figure an operator's memory limit is checked against) although free.

So, a production decision: after such work, `malloc_trim(0)` returns the free pages of every
heap. It walks the heaps (milliseconds for a gigabyte), so it runs once per burst, a short
while after the last large piece of work (`trim_soon`), never per request. Python's own
small-object arenas are returned by Python when empty; this is the rest (large objects,
protobuf and gRPC buffers). Nothing happens where malloc_trim does not exist (not glibc).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable

DELAY = 1.0  # seconds after the last large piece of work


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_TRIM = _malloc_trim()
_pending: asyncio.TimerHandle | None = None


def trim() -> None:
    """Return the free pages of malloc's heaps to the system now."""
    if _TRIM is not None:
        _TRIM(0)


def trim_soon(delay: float = DELAY) -> None:
    """Trim `delay` seconds from the last call (one trim per burst of calls); from the
    event loop's thread."""
    global _pending
    if _TRIM is None:
        return
    loop = asyncio.get_running_loop()
    if _pending is not None:
        _pending.cancel()
    _pending = loop.call_later(delay, _run)


def _run() -> None:
    global _pending
    _pending = None
    trim()
