"""The two-node lab's mesh as Kubernetes and Istio objects, for `meshnode controlplane --config
DIR` (testing/mesh_procs.py's `ControlPlaneProc`).

What a two-node lab needs per workload, service and policy, said the way a cluster says it
(the control plane converts it as istiod's ambient index does):

| the lab needs                              | here                                           |
|--------------------------------------------|------------------------------------------------|
| a workload's name, namespace, uid          | Pod `metadata.name`/`namespace`; the served    |
|                                            | uid is `Kubernetes//Pod/<ns>/<name>`           |
| its service account, node, IPs, labels     | `spec.serviceAccountName`, `spec.nodeName`,    |
|                                            | `status.podIP(s)`, `metadata.labels`           |
| healthy or not                             | the Ready condition True / False               |
| reached over HBONE                         | `istio.io/dataplane-mode: ambient` on the      |
|                                            | Namespace (or the Pod)                         |
| locality                                   | the Node's topology labels                     |
| a service's VIP, ports, selector           | Service `spec.clusterIP`, `ports` (`port`,     |
|                                            | `targetPort`), `selector`                      |
| locality-aware load balancing              | `internalTrafficPolicy: Local` (strict [node]),|
|                                            | `trafficDistribution` (failover [network,      |
|                                            | region, zone(, subzone, node)])                |
| L4 policies                                | AuthorizationPolicy (security.istio.io/v1)     |

`write(directory, name, *docs)` writes a file the way an editor or `kubectl apply` would leave
it for the watcher: complete, never half-written (written under a dot-name, which the
control plane ignores, then renamed into place).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

AMBIENT = {"istio.io/dataplane-mode": "ambient"}
REGION = "topology.kubernetes.io/region"
ZONE = "topology.kubernetes.io/zone"
SUBZONE = "topology.istio.io/subzone"


def namespace(name: str, ambient: bool = True) -> Obj:
    """A Namespace; `ambient`: its pods are enrolled and reached over HBONE."""
    meta: Obj = {"name": name}
    if ambient:
        meta["labels"] = dict(AMBIENT)
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def node(name: str, locality: Mapping[str, str] | None = None) -> Obj:
    """A Node; `locality` ({region, zone, subzone}) becomes the
    topology labels every pod on the node inherits."""
    labels = {key: (locality or {})[part]
              for part, key in (("region", REGION), ("zone", ZONE), ("subzone", SUBZONE))
              if (locality or {}).get(part)}
    meta: Obj = {"name": name}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "Node", "metadata": meta}


def pod(name: str, ip: str, node_name: str, *, ns: str = "default",
        service_account: str = "default", labels: Mapping[str, str] | None = None,
        ready: bool = True, ports: Sequence[int] = ()) -> Obj:
    """A running Pod on `node_name` with IP `ip`; `ready` is its Ready condition (a workload's
    health); `ports` its container's TCP ports."""
    container: Obj = {"name": "app", "image": "app"}
    if ports:
        container["ports"] = [{"containerPort": p} for p in ports]
    meta: Obj = {"name": name, "namespace": ns, "uid": f"uid-{ns}-{name}"}
    if labels:
        meta["labels"] = dict(labels)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": node_name, "serviceAccountName": service_account,
                     "containers": [container]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready",
                                       "status": "True" if ready else "False"}]}}


def service(name: str, vip: str, ports: Sequence[tuple[int, int]], *, ns: str = "default",
            selector: Mapping[str, str] | None = None,
            annotations: Mapping[str, str] | None = None, **spec: Any) -> Obj:
    """A ClusterIP Service: `vip` is its clusterIP, `ports` (port, targetPort) pairs, TCP;
    `spec` adds fields (internalTrafficPolicy, trafficDistribution, ...)."""
    body: Obj = {"type": "ClusterIP", "clusterIP": vip, "clusterIPs": [vip],
                 "ports": [{"name": f"tcp-{p}", "port": p, "targetPort": t, "protocol": "TCP"}
                           for p, t in ports], **spec}
    if selector:
        body["selector"] = dict(selector)
    meta: Obj = {"name": name, "namespace": ns}
    if annotations:
        meta["annotations"] = dict(annotations)
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": body}


def authorization_policy(name: str, action: str, rules: list[Obj], *, ns: str = "default",
                         selector: Mapping[str, str] | None = None) -> Obj:
    """An AuthorizationPolicy in Istio's YAML: `action` ALLOW or DENY, `rules` as Istio
    writes them ({from: [{source: ...}], to: [{operation: ...}]}); without `selector` it
    applies to its whole namespace."""
    spec: Obj = {"action": action, "rules": rules}
    if selector:
        spec = {"selector": {"matchLabels": dict(selector)}, **spec}
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def two_nodes(localities: Mapping[str, Mapping[str, str]] | None = None,
              namespaces: Iterable[str] = ("default",)) -> list[Obj]:
    """What every two-node lab has: its ambient namespaces and the Nodes node1 and node2
    (with `localities[node]`, if given, as their topology labels)."""
    return [*(namespace(ns) for ns in namespaces),
            *(node(n, (localities or {}).get(n)) for n in ("node1", "node2"))]


def write(directory: Path, name: str, *docs: Obj | str) -> Path:
    """Write `name` in `directory` with `docs` (objects, as YAML documents; a str is written
    as it is), completely or not at all, as the watcher must see it."""
    text = "".join(d if isinstance(d, str) else "---\n" + yaml.safe_dump(d, sort_keys=False)
                   for d in docs)
    path = directory / name
    tmp = directory / f".{name}.tmp"  # a dot-name: not a manifest until renamed
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def remove(directory: Path, name: str) -> None:
    """Delete `name` (`kubectl delete -f`): its objects go away; nothing if it is absent."""
    (directory / name).unlink(missing_ok=True)
