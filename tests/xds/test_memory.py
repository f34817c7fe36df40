"""A 100k-workload snapshot, applied through the client's response path, costs < 1 KiB per
workload of agent memory.

Two measures: at 100k, the deep size of everything reachable from the client (each object
counted once, so shared/interned values count once, as they should); at 10k, tracemalloc
(every Python allocation kept, allocator overhead included), which is too slow at 100k.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc

from testing.xds import client, deep_size, snapshot

N = 100_000


def test_100k_workloads_under_1kib_each() -> None:
    resp = snapshot(N)
    c = client()
    baseline = deep_size(c)
    t = time.perf_counter()
    ack = asyncio.run(c.handle(resp))
    elapsed = time.perf_counter() - t
    assert not ack.HasField("error_detail"), ack.error_detail.message
    assert len(c.state.workloads) == N and len(c.state.services) == 2000
    assert c.state.workload_by_ip("10.1.134.159") is not None
    per = (deep_size(c) - baseline) / N
    print(f"\n{N} workloads: {per:.0f} B/workload (deep size), applied in {elapsed:.2f}s")
    assert per < 1024, per


def test_10k_workloads_under_1kib_each_by_tracemalloc() -> None:
    n = 10_000
    resp = snapshot(n)
    c = client()
    gc.collect()
    tracemalloc.start()
    try:
        ack = asyncio.run(c.handle(resp))
        gc.collect()
        used, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not ack.HasField("error_detail") and len(c.state.workloads) == n
    per = used / n
    print(f"\n{n} workloads: {per:.0f} B/workload (tracemalloc)")
    assert per < 1024, per
