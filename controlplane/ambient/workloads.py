"""Pod, WorkloadEntry, ServiceEntry endpoints and EndpointSlice endpoints -> workload API
workloads, as istiod's ambient index builds them (istio/istio
pilot/pkg/serviceregistry/ambient/workloads.go: podWorkloadBuilder,
workloadEntryWorkloadBuilder, serviceEntryWorkloadBuilder, endpointSlicesBuilder,
constructServices, constructServicesFromWorkloadEntry; helpers.go: uids, FindPortName,
IsPodReady).

The caller (index.py) picks the inputs that live in other objects: the services that select
the workload, the policy keys it lists, its node's locality, the network. These functions
only read the object itself, so each one is a pure function of its arguments.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from controlplane.ambient import labels as lbl
from controlplane.ambient import read
from controlplane.ambient.options import Options
from controlplane.ambient.services import SERVICE, SERVICE_ENTRY, ServiceInfo
from core.mesh.model import DEFAULT_TRUST_DOMAIN, NO_LOCALITY, Port, Workload, WorkloadStatus
from meshpb.istio import workload_pb2 as wl

ServicesMap = tuple[tuple[str, tuple[Port, ...]], ...]
SLICE_SERVICE_LABEL = "kubernetes.io/service-name"


def trust_domain(opts: Options) -> str:
    """istiod leaves the default trust domain out (pickTrustDomain)."""
    return "" if opts.trust_domain == DEFAULT_TRUST_DOMAIN else opts.trust_domain


# ---- ports --------------------------------------------------------------------------------

def container_ports(spec: dict[str, Any]) -> dict[str, int]:
    """Named TCP container ports (first one of a name wins), then those of native sidecars
    (init containers with restartPolicy Always), as istiod's FindPortName searches them."""
    out: dict[str, int] = {}
    for group in ("containers", "initContainers"):
        for i, c in enumerate(read.items(spec.get(group), f"spec.{group}")):
            f = f"spec.{group}[{i}]"
            c = read.mapping(c, f)
            if group == "initContainers" and c.get("restartPolicy") != "Always":
                continue
            for j, p in enumerate(read.items(c.get("ports"), f"{f}.ports")):
                pf = f"{f}.ports[{j}]"
                p = read.mapping(p, pf)
                name = read.string(p.get("name"), f"{pf}.name")
                number = read.port(p.get("containerPort"), f"{pf}.containerPort")
                if name and read.string(p.get("protocol"), f"{pf}.protocol", "TCP") == "TCP":
                    out.setdefault(name, number)
    return out


def pod_services(named: dict[str, int], infos: Iterable[ServiceInfo]) -> ServicesMap:
    """The pod's ports per service (constructServices): a Service's named targetPort is
    looked up in the pod's container ports (not found: that port is left out); a
    ServiceEntry port is matched by its name to a container port, else keeps its target."""
    out = []
    for info in infos:
        ports = []
        for p in info.service.ports:
            target = p.target_port
            named_port = info.port_name(p.service_port)
            if named_port is not None:
                if named_port.target_name:
                    if named_port.target_name not in named:
                        continue
                    target = named[named_port.target_name]
                elif info.kind == SERVICE_ENTRY and named_port.name:
                    if named_port.name in named:
                        target = named[named_port.name]
                    elif target == 0:
                        target = p.service_port
            ports.append(Port(p.service_port, target))
        out.append((info.key, tuple(ports)))
    return tuple(sorted(out))


def entry_services(named: dict[str, int], infos: Iterable[ServiceInfo]) -> ServicesMap:
    """A WorkloadEntry's (or inline endpoint's) ports per service
    (constructServicesFromWorkloadEntry): its `ports` map is keyed by port name; a Service's
    named targetPort must be in it, else that port is left out."""
    out = []
    for info in infos:
        ports = []
        for p in info.service.ports:
            target = p.target_port
            named_port = info.port_name(p.service_port)
            if named_port is not None:
                if info.kind == SERVICE:
                    if named_port.target_name:
                        if named_port.target_name not in named:
                            continue
                        target = named[named_port.target_name]
                    elif named_port.name in named:
                        target = named[named_port.name]
                elif named_port.name in named:
                    target = named[named_port.name]
                elif target == 0:
                    target = p.service_port
            ports.append(Port(p.service_port, target))
        out.append((info.key, tuple(ports)))
    return tuple(sorted(out))


def _entry_ports(v: Any, field: str) -> dict[str, int]:
    return {str(k): read.port(x, f"{field}.{k}") for k, x in read.mapping(v, field).items()}


# ---- Pod ----------------------------------------------------------------------------------

def pod_ips(status: dict[str, Any]) -> list[str]:
    """status.podIPs, else status.podIP (normalized text)."""
    ips = [read.ip(read.mapping(p, f"status.podIPs[{i}]").get("ip"), f"status.podIPs[{i}].ip")
           for i, p in enumerate(read.items(status.get("podIPs"), "status.podIPs"))]
    if not ips and status.get("podIP"):
        ips = [read.ip(status.get("podIP"), "status.podIP")]
    return ips


def pod_ready(status: dict[str, Any]) -> bool:
    for i, c in enumerate(read.items(status.get("conditions"), "status.conditions")):
        c = read.mapping(c, f"status.conditions[{i}]")
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def pod_uid(opts: Options, namespace: str, name: str) -> str:
    return f"{opts.cluster_id}//Pod/{namespace}/{name}"


def pod_workload(obj: dict[str, Any], *, ns_labels: dict[str, str],
                 locality: tuple[str, str, str], services: Iterable[ServiceInfo],
                 policies: tuple[str, ...], network: str, opts: Options) -> Workload | None:
    """A pod's workload; None for a finished pod (Succeeded/Failed) or one with no IP yet
    (a pending pod with an IP is a workload, UNHEALTHY)."""
    name, ns = read.name(obj), read.namespace(obj)
    labels, annotations = read.labels_of(obj), read.annotations_of(obj)
    spec = read.spec(obj)
    status = read.mapping(obj.get("status"), "status")
    if status.get("phase") in ("Succeeded", "Failed"):
        return None
    ips = pod_ips(status)
    if not ips:
        return None
    host_network = read.boolean(spec.get("hostNetwork"), "spec.hostNetwork")
    healthy = pod_ready(status) and read.meta(obj).get("deletionTimestamp") is None
    enrolled = (lbl.enrolled_by_labels(labels, annotations, host_network, ns_labels)
                if opts.enroll_by_labels else None)
    proto, native = lbl.tunnel(labels, annotations, enrolled)
    workload_name = lbl.pod_workload_name(obj, name, labels)
    cname, crev = lbl.canonical_service(labels, workload_name)
    return Workload(
        uid=pod_uid(opts, ns, name), name=name, namespace=ns, addresses=tuple(ips),
        network=network, tunnel_protocol=proto, native_tunnel=native,
        trust_domain=trust_domain(opts),
        service_account=read.string(spec.get("serviceAccountName"), "spec.serviceAccountName"),
        node=read.string(spec.get("nodeName"), "spec.nodeName"),
        canonical_name=cname, canonical_revision=crev, workload_type=int(wl.POD),
        workload_name=workload_name,
        services=pod_services(container_ports(spec), services),
        authorization_policies=policies,
        status=WorkloadStatus.HEALTHY if healthy else WorkloadStatus.UNHEALTHY,
        cluster_id=opts.cluster_id, locality=locality,
        network_mode=int(wl.HOST_NETWORK if host_network else wl.STANDARD))


# ---- WorkloadEntry and ServiceEntry endpoints ---------------------------------------------

def entry_labels(obj: dict[str, Any]) -> dict[str, str]:
    """A WorkloadEntry's labels: spec.labels merged with metadata.labels (metadata wins)."""
    spec_labels = read.string_map(read.spec(obj).get("labels"), "spec.labels")
    return {**spec_labels, **read.labels_of(obj)}


def _entry(e: dict[str, Any], f: str, *, uid: str, name: str, ns: str, workload_name: str,
           labels: dict[str, str], annotations: dict[str, str], services: ServicesMap,
           policies: tuple[str, ...], network: str, opts: Options) -> Workload:
    """The workload of one WorkloadEntry spec (a WorkloadEntry, or a ServiceEntry endpoint)."""
    address = read.string(e.get("address"), f"{f}.address")
    addresses: tuple[str, ...]
    try:
        addresses, host = (read.ip(address, f"{f}.address"),), ""
    except read.Bad:  # not an IP: a hostname (or empty), as istiod
        addresses, host = (), address
    weight = read.integer(e.get("weight"), f"{f}.weight", 0, 2**32 - 1, default=0)
    region, zone, subzone = lbl.split_locality(read.string(e.get("locality"),
                                                           f"{f}.locality"))
    proto, native = lbl.tunnel(labels, annotations, None)
    cname, crev = lbl.canonical_service(labels, workload_name)
    return Workload(
        uid=uid, name=name, namespace=ns, addresses=addresses, hostname=host,
        network=read.string(e.get("network"), f"{f}.network") or network,
        tunnel_protocol=proto, native_tunnel=native, trust_domain=trust_domain(opts),
        service_account=read.string(e.get("serviceAccount"), f"{f}.serviceAccount"),
        canonical_name=cname, canonical_revision=crev,
        workload_type=int(wl.POD),  # as istiod: impersonates a pod
        workload_name=workload_name, services=services, authorization_policies=policies,
        status=WorkloadStatus.HEALTHY, cluster_id=opts.cluster_id,
        locality=(region, zone, subzone), capacity=weight if weight > 0 else 1)


def workload_entry_uid(opts: Options, namespace: str, name: str) -> str:
    return f"{opts.cluster_id}/networking.istio.io/WorkloadEntry/{namespace}/{name}"


def workload_entry_workload(obj: dict[str, Any], *, services: Iterable[ServiceInfo],
                            policies: tuple[str, ...], network: str,
                            opts: Options) -> Workload:
    """A WorkloadEntry: always HEALTHY (istiod has no health for it yet); its address is an
    IP or else a hostname; `network` set on it wins over the local network."""
    name, ns = read.name(obj), read.namespace(obj)
    spec = read.spec(obj)
    labels, annotations = entry_labels(obj), read.annotations_of(obj)
    return _entry(spec, "spec", uid=workload_entry_uid(opts, ns, name), name=name, ns=ns,
                  workload_name=lbl.entry_workload_name(name, annotations, labels),
                  labels=labels, annotations=annotations,
                  services=entry_services(_entry_ports(spec.get("ports"), "spec.ports"),
                                          services),
                  policies=policies, network=network, opts=opts)


def service_entry_uid(opts: Options, namespace: str, name: str, address: str) -> str:
    return f"{opts.cluster_id}/networking.istio.io/ServiceEntry/{namespace}/{name}/{address}"


def service_entry_workloads(obj: dict[str, Any], *, services: list[ServiceInfo],
                            resolution: str, policies: tuple[str, ...], network: str,
                            opts: Options, warnings: list[str]) -> list[Workload]:
    """A ServiceEntry's inline endpoints (each a workload of all its served hosts); with DNS
    resolution, no endpoints and no workloadSelector, one workload per host whose hostname is
    the host. `services` are the entry's services that won their hostname; none: no
    workloads (istiod drops the endpoints of an entry deduplicated away). The workloads take
    the entry's labels for canonical names and policies."""
    name, ns = read.name(obj), read.namespace(obj)
    spec = read.spec(obj)
    labels, annotations = read.labels_of(obj), read.annotations_of(obj)
    endpoints = read.items(spec.get("endpoints"), "spec.endpoints")
    implicit = (not endpoints and spec.get("workloadSelector") is None
                and resolution in ("DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"))
    if not services or (not endpoints and not implicit):
        return []
    out: list[Workload] = []
    seen: set[str] = set()
    entries: list[tuple[dict[str, Any], str, list[ServiceInfo]]]
    if implicit:
        entries = [({"address": s.service.hostname}, "spec.hosts", [s]) for s in services]
    else:
        entries = [(read.mapping(e, f"spec.endpoints[{i}]"), f"spec.endpoints[{i}]", services)
                   for i, e in enumerate(endpoints)]
    for e, f, infos in entries:
        address = read.string(e.get("address"), f"{f}.address")
        uid = service_entry_uid(opts, ns, name, address)
        if uid in seen:
            warnings.append(f"{f}.address: {address!r} listed twice; the first is used")
            continue
        seen.add(uid)
        ep_ports = _entry_ports(e.get("ports"), f"{f}.ports")
        read.string_map(e.get("labels"), f"{f}.labels")  # checked; used only by waypoints
        out.append(_entry(e, f, uid=uid, name=name, ns=ns, workload_name=name, labels=labels,
                          annotations=annotations, services=entry_services(ep_ports, infos),
                          policies=policies, network=network, opts=opts))
    return out


# ---- EndpointSlice ------------------------------------------------------------------------

def slice_service(obj: dict[str, Any]) -> str | None:
    """The Service an EndpointSlice is for (None: not for a Service, or FQDN addresses,
    which istiod does not use)."""
    if read.string(obj.get("addressType"), "addressType") == "FQDN":
        return None
    return read.labels_of(obj).get(SLICE_SERVICE_LABEL)


def slice_pod_targets(obj: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(namespace, name, uid) of the pods the slice's endpoints point at."""
    out = set()
    for i, ep in enumerate(read.items(obj.get("endpoints"), "endpoints")):
        ep = read.mapping(ep, f"endpoints[{i}]")
        ref = read.mapping(ep.get("targetRef"), f"endpoints[{i}].targetRef")
        if ref.get("kind") == "Pod":
            out.add((str(ref.get("namespace") or ""), str(ref.get("name") or ""),
                     str(ref.get("uid") or "")))
    return out


def endpoint_slice_workloads(obj: dict[str, Any], *, service: ServiceInfo,
                             network: str, opts: Options, warnings: list[str],
                             errors: list[str]) -> list[Workload]:
    """Workloads for endpoints that are not pods (a Service without a selector, filled by
    hand: istiod's endpointSlicesBuilder). Pod endpoints are skipped: the pod is the workload.
    Little is known of them: no identity, no policies; HOST_NETWORK since their IPs may be
    shared. Only TCP slice ports that name a port of the Service are mapped. An endpoint with
    a bad address is left out (its reason added to `errors`), as istiod skips it."""
    name, ns = read.name(obj), read.namespace(obj)
    ports = []
    for i, p in enumerate(read.items(obj.get("ports"), "ports")):
        f = f"ports[{i}]"
        p = read.mapping(p, f)
        if p.get("name") is None or p.get("port") is None:
            continue
        if read.string(p.get("protocol"), f"{f}.protocol", "TCP") != "TCP":
            continue
        pname = read.string(p.get("name"), f"{f}.name")
        number = read.port(p.get("port"), f"{f}.port")
        for sp in service.service.ports:
            named = service.port_name(sp.service_port)
            if named is not None and named.name == pname:
                ports.append(Port(sp.service_port, number))
                break
    services: ServicesMap = ((service.key, tuple(ports)),)
    out: list[Workload] = []
    seen: set[str] = set()
    for i, ep in enumerate(read.items(obj.get("endpoints"), "endpoints")):
        f = f"endpoints[{i}]"
        ep = read.mapping(ep, f)
        if read.mapping(ep.get("targetRef"), f"{f}.targetRef").get("kind") == "Pod":
            continue
        raw = read.strings(ep.get("addresses"), f"{f}.addresses")
        if not raw:
            continue
        if raw[0] in seen:
            warnings.append(f"{f}.addresses: {raw[0]} listed twice; the first is used")
            continue
        seen.add(raw[0])
        try:
            addresses = tuple(read.ip(a, f"{f}.addresses[{j}]") for j, a in enumerate(raw))
        except read.Bad as e:
            errors.append(str(e))
            continue
        ready = read.mapping(ep.get("conditions"), f"{f}.conditions").get("ready")
        healthy = ready is None or ready is True
        out.append(Workload(
            uid=f"{opts.cluster_id}/discovery.k8s.io/EndpointSlice/{ns}/{name}/{raw[0]}",
            name=name, namespace=ns, addresses=addresses, network=network,
            trust_domain=trust_domain(opts), services=services,
            status=WorkloadStatus.HEALTHY if healthy else WorkloadStatus.UNHEALTHY,
            cluster_id=opts.cluster_id, locality=NO_LOCALITY,
            network_mode=int(wl.HOST_NETWORK)))
    return out
