"""Builders for the plain-dict Kubernetes/Istio objects the tests put in an ObjectStore, and a
`convert` that runs the index over them."""

from __future__ import annotations

from typing import Any

from controlplane.ambient import Index, MeshState, Options
from controlplane.kube.objects import (
    AUTHORIZATION_POLICY,
    ENDPOINT_SLICE,
    NAMESPACE,
    NODE,
    PEER_AUTHENTICATION,
    POD,
    SERVICE,
    SERVICE_ENTRY,
    WORKLOAD_ENTRY,
    Kind,
    ObjectStore,
)

Obj = dict[str, Any]
READY = [{"type": "Ready", "status": "True"}]


def _meta(name: str, ns: str | None, labels: dict[str, Any] | None,
          annotations: dict[str, str] | None, **extra: Any) -> Obj:
    m: Obj = {"name": name, **extra}
    if ns is not None:
        m["namespace"] = ns
    if labels:
        m["labels"] = labels
    if annotations:
        m["annotations"] = annotations
    return m


def namespace(name: str, labels: dict[str, str] | None = None,
              annotations: dict[str, str] | None = None) -> Obj:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": _meta(name, None, labels, annotations)}


def node(name: str, labels: dict[str, str] | None = None) -> Obj:
    return {"apiVersion": "v1", "kind": "Node", "metadata": _meta(name, None, labels, None)}


def pod(name: str, ns: str = "ns", *, ip: str | None = "1.2.3.4",
        labels: dict[str, Any] | None = None, annotations: dict[str, str] | None = None,
        ready: bool = True, phase: str = "Running", node: str | None = None,
        ports: dict[str, int] | None = None, meta: Obj | None = None,
        spec: Obj | None = None, status: Obj | None = None) -> Obj:
    s: Obj = {**({"nodeName": node} if node else {}), **(spec or {})}
    if ports:
        s["containers"] = [{"name": "app", "ports": [
            {"name": n, "containerPort": p, "protocol": "TCP"} for n, p in ports.items()]}]
    st: Obj = {"phase": phase, **({"podIP": ip} if ip else {}),
               **({"conditions": READY} if ready else {}), **(status or {})}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": _meta(name, ns, labels, annotations, **(meta or {})),
            "spec": s, "status": st}


def service(name: str, ns: str = "ns", *, selector: dict[str, str] | None = None,
            ports: list[Obj] | None = None, cluster_ip: str | None = "10.96.0.1",
            annotations: dict[str, str] | None = None, created: str | None = None,
            **spec: Any) -> Obj:
    s: Obj = {"ports": ports if ports is not None else [{"name": "http", "port": 80}],
              **spec}
    if selector is not None:
        s["selector"] = selector
    if cluster_ip:
        s["clusterIP"] = cluster_ip
    extra = {"creationTimestamp": created} if created else {}
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _meta(name, ns, None, annotations, **extra), "spec": s}


def service_entry(name: str, ns: str = "ns", *, hosts: list[str], created: str | None = None,
                  labels: dict[str, str] | None = None,
                  annotations: dict[str, str] | None = None, **spec: Any) -> Obj:
    extra = {"creationTimestamp": created} if created else {}
    return {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": _meta(name, ns, labels, annotations, **extra),
            "spec": {"hosts": hosts, **spec}}


def workload_entry(name: str, ns: str = "ns", *, labels: dict[str, str] | None = None,
                   annotations: dict[str, str] | None = None, **spec: Any) -> Obj:
    return {"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
            "metadata": _meta(name, ns, labels, annotations), "spec": spec}


def endpoint_slice(name: str, ns: str = "ns", *, service: str | None,
                   endpoints: list[Obj], ports: list[Obj] | None = None,
                   address_type: str = "IPv4") -> Obj:
    labels = {"kubernetes.io/service-name": service} if service else None
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": _meta(name, ns, labels, None), "addressType": address_type,
            "endpoints": endpoints, "ports": ports or []}


def authorization_policy(name: str, ns: str = "ns", *, annotations: dict[str, str] | None
                         = None, **spec: Any) -> Obj:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": _meta(name, ns, None, annotations), "spec": spec}


def peer_authentication(name: str, ns: str = "ns", *, selector: dict[str, str] | None = None,
                        mode: str | None = None, ports: dict[int, str] | None = None,
                        created: str | None = None) -> Obj:
    spec: Obj = {}
    if selector is not None:
        spec["selector"] = {"matchLabels": selector}
    if mode is not None:
        spec["mtls"] = {"mode": mode}
    if ports:
        spec["portLevelMtls"] = {p: {"mode": m} for p, m in ports.items()}
    extra = {"creationTimestamp": created} if created else {}
    return {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": _meta(name, ns, None, None, **extra), "spec": spec}


KIND_OF: dict[str, Kind] = {k.kind: k for k in (
    NAMESPACE, NODE, POD, SERVICE, SERVICE_ENTRY, WORKLOAD_ENTRY, ENDPOINT_SLICE,
    AUTHORIZATION_POLICY, PEER_AUTHENTICATION)}


def store_of(*objs: Obj) -> ObjectStore:
    store = ObjectStore()
    for o in objs:
        store.put(KIND_OF[o["kind"]], o)
    return store


def put(store: ObjectStore, *objs: Obj) -> None:
    for o in objs:
        store.put(KIND_OF[o["kind"]], o)


def convert(*objs: Obj, options: Options | None = None) -> MeshState:
    return Index(store_of(*objs), options, watch=False).state()
