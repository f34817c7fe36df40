"""A 100k-workload snapshot, applied through the client's response path, costs < 1 KiB per
workload of agent memory.

Two measures: at 100k, the deep size of everything reachable from the client (each object
counted once, so shared/interned values count once, as they should); at 10k, tracemalloc
(every Python allocation kept, allocator overhead included), which is too slow at 100k.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
import tracemalloc
import types

from envoy.service.discovery.v3 import discovery_pb2

from agent.xds.client import ADDRESS_TYPE
from tests.xds.fake_ads import res_service, res_workload, workload
from tests.xds.test_handle import client

N = 100_000


def snapshot(n: int) -> object:
    """Shaped like a real cluster: 50 namespaces, 2000 deployments (service account, service,
    canonical name) over 500 nodes; unique uid, pod name, IP and resource version per pod."""
    resources = []
    for i in range(n):
        dep, ns = i % 2000, f"ns{i % 50}"
        w = workload(f"Kubernetes//Pod/{ns}/app{dep}-7d9f8c6b5-{i:06x}",
                     ip=bytes([10, i >> 16 & 255, i >> 8 & 255, i & 255]), node=f"node{i % 500}",
                     sa=f"sa{dep}", ns=ns, services={f"{ns}/app{dep}.{ns}.svc.cluster.local": 80},
                     trust_domain="cluster.local", canonical_name=f"app{dep}",
                     canonical_revision="v1", workload_name=f"app{dep}", cluster_id="Kubernetes")
        resources.append(res_workload(w, version=f"{i * 2654435761 % 2**64:016x}"))
    for d in range(2000):
        ns = f"ns{d % 50}"
        resources.append(res_service(ns, f"app{d}.{ns}.svc.cluster.local",
                                     bytes([10, 96, d >> 8, d & 255])))
    return discovery_pb2.DeltaDiscoveryResponse(type_url=ADDRESS_TYPE, resources=resources,
                                                nonce="n")


def deep_size(root: object) -> int:
    """Bytes of every object reachable from `root`; classes, modules and functions excluded."""
    seen: set[int] = set()
    stack = [root]
    total = 0
    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType,
            types.MethodType)
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, skip):
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        stack.extend(gc.get_referents(o))
    return total


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
