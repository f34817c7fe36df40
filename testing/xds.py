"""An xDS client without a channel and a big discovery snapshot: the agent's memory
tests (tests/xds/test_memory.py) and the mesh benchmark (bench/mesh_path.py) share them."""

from __future__ import annotations

import gc
import sys
import types

from envoy.service.discovery.v3 import discovery_pb2

from agent.xds.channel import ControlPlaneEndpoint
from agent.xds.client import ADDRESS_TYPE, DeltaAdsClient, XdsClientConfig
from agent.xds.node import NodeInfo
from testing.fake_ads import res_service, res_workload, workload


def client() -> DeltaAdsClient:
    return DeltaAdsClient(XdsClientConfig(ControlPlaneEndpoint("127.0.0.1:1", "/nonexistent"),
                                          NodeInfo(node_name="n1")))


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
