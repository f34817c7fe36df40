"""The istio_tcp_* labels a pod's proxy computes (proxy/metrics.py, proxy/inpod/workload.py),
with the values ztunnel gives them.

Facts from istio/ztunnel at 62d82653:
- src/proxy/metrics.rs `CommonTrafficLabels`: the label names and their order; unknown
  values are "unknown" (`DefaultedUnknown`); `with_source` takes workload_name,
  canonical_name (also as app), canonical_revision (also as version), namespace,
  cluster_id and locality, never the principal; `with_destination` the same and the
  workload's identity as destination_principal; `ResponseFlags` "-", "DENY", "CONNECT", ...;
- src/proxy/outbound.rs `conn_metrics_from_request`: reporter source; HBONE is mutual_tls
  with our own identity as source_principal, plain TCP is "unknown" with none;
  `intended_destination_service` only for a service address;
- src/proxy/inbound.rs / inbound_passthrough.rs: reporter destination; HBONE mutual_tls with
  the peer's TLS identity, passthrough "unknown"; `guess_inbound_service` (proxy.rs): the
  Forwarded host first, then the target port;
- src/proxy.rs `test_parse_forwarded_host`, src/proxy/outbound.rs `build_forwarded` test;
- tests/namespaced.rs (test_svc_lb...): "11 bytes sent, 22 received by the client" are
  istio_tcp_received_bytes_total 11 and istio_tcp_sent_bytes_total 22.

The mesh goes in as the agent sends it (core/mesh/channel.py) into the proxy's table.
"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY

from core.mesh import channel
from core.mesh.model import Port, Service, TunnelProtocol, Vip, Workload
from proxy import metrics
from proxy.config import ProxyConfig
from proxy.hbone.client import forwarded
from proxy.hbone.server import parse_forwarded_host
from proxy.inpod.meshpath import PodMesh
from proxy.inpod.workload import PodProxy
from proxy.meshconfig.runtime import ProxyMesh

SLEEP_IP, ECHO_IP, LEGACY_IP, OUTSIDER = "10.1.0.1", "10.2.0.1", "10.3.0.1", "10.9.0.9"
VIP = "10.96.0.10"
ECHO_HOST = "echo.default.svc.cluster.local"
SLEEP_ID = "spiffe://cluster.local/ns/default/sa/sleep"
ECHO_ID = "spiffe://cluster.local/ns/default/sa/echo"

SLEEP = Workload(uid="Kubernetes//Pod/default/sleep-6d4c8b7f9-abcde", name="sleep-6d4c8b7f9-abcde",
                 namespace="default", addresses=(SLEEP_IP,), service_account="sleep",
                 tunnel_protocol=TunnelProtocol.HBONE, workload_name="sleep",
                 canonical_name="sleep", canonical_revision="v1", cluster_id="Kubernetes",
                 locality=("us-east", "us-east-1a", ""))
ECHO = Workload(uid="Kubernetes//Pod/default/echo-7f9c-xyz12", name="echo-7f9c-xyz12",
                namespace="default", addresses=(ECHO_IP,), service_account="echo",
                tunnel_protocol=TunnelProtocol.HBONE, workload_name="echo",
                canonical_name="echo-app", canonical_revision="v2", cluster_id="Kubernetes",
                services=((f"default/{ECHO_HOST}", (Port(80, 8080),)),
                          ("default/echo-admin.default.svc.cluster.local", (Port(9000, 9090),))))
LEGACY = Workload(uid="Kubernetes//Pod/legacy/db-0", name="db-0", namespace="legacy",
                  addresses=(LEGACY_IP,), service_account="db", workload_name="db",
                  canonical_name="db", canonical_revision="latest", cluster_id="Kubernetes")
ECHO_SVC = Service(name="echo", namespace="default", hostname=ECHO_HOST,
                   vips=(Vip("", VIP),), ports=(Port(80, 8080),), subject_alt_names=())
ADMIN_SVC = Service(name="echo-admin", namespace="default",
                    hostname="echo-admin.default.svc.cluster.local",
                    ports=(Port(9000, 0),))  # a named targetPort: the endpoint says 9090


def mesh() -> ProxyMesh:
    m = ProxyMesh("/nonexistent/mesh.sock")  # never started: only its table is used
    m.table.apply({"t": "snapshot", "trust_domain": "cluster.local",
                   "workloads": [channel.encode_workload(w) for w in (SLEEP, ECHO, LEGACY)],
                   "services": [channel.encode_service(s) for s in (ECHO_SVC, ADMIN_SVC)]})
    return m


def pod_proxy(w: Workload | None, name: str, ip: str, with_mesh: bool = True) -> PodProxy:
    """A PodProxy as the manager makes one, without its netns (only labels are asked)."""
    pod = PodProxy.__new__(PodProxy)
    pod.uid, pod.name, pod.namespace = "uid", name, "default"
    pod.service_account = w.service_account if w else "default"
    pod.ips, pod.cfg = {ip}, ProxyConfig()
    local = {SLEEP_IP: ("sleep-6d4c8b7f9-abcde", "default"), ECHO_IP: ("echo-7f9c-xyz12",
                                                                       "default")}
    pod.lookup = lambda i: local.get(i, ("unknown", "unknown"))
    pod.meshpath = PodMesh(pod, mesh()) if with_mesh else None
    return pod


def named(labels: tuple[str, ...]) -> dict[str, str]:
    assert len(labels) == len(metrics.LABELS)
    return dict(zip(metrics.LABELS, labels, strict=True))


def test_label_names_are_ztunnels_in_its_order() -> None:
    assert metrics.LABELS == (
        "reporter",
        "source_workload", "source_canonical_service", "source_canonical_revision",
        "source_workload_namespace", "source_principal", "source_app", "source_version",
        "source_cluster",
        "destination_service", "destination_service_namespace", "destination_service_name",
        "destination_workload", "destination_canonical_service",
        "destination_canonical_revision", "destination_workload_namespace",
        "destination_principal", "destination_app", "destination_version",
        "destination_cluster",
        "request_protocol", "response_flags", "connection_security_policy",
        "source_region", "source_zone", "destination_region", "destination_zone")
    for counter in (metrics.OPENED, metrics.CLOSED, metrics.SENT, metrics.RECEIVED):
        assert tuple(counter._labelnames) == metrics.LABELS
        assert "direction" not in counter._labelnames


SLEEP_SIDE = {"source_workload": "sleep", "source_canonical_service": "sleep",
              "source_canonical_revision": "v1", "source_workload_namespace": "default",
              "source_app": "sleep", "source_version": "v1", "source_cluster": "Kubernetes",
              "source_region": "us-east", "source_zone": "us-east-1a"}
ECHO_SIDE = {"destination_workload": "echo", "destination_canonical_service": "echo-app",
             "destination_canonical_revision": "v2", "destination_workload_namespace": "default",
             "destination_principal": ECHO_ID, "destination_app": "echo-app",
             "destination_version": "v2", "destination_cluster": "Kubernetes",
             "destination_region": "unknown", "destination_zone": "unknown"}
ECHO_SERVICE = {"destination_service": ECHO_HOST, "destination_service_name": "echo",
                "destination_service_namespace": "default"}
NO_SERVICE = {"destination_service": "unknown", "destination_service_name": "unknown",
              "destination_service_namespace": "unknown"}
TCP = {"request_protocol": "tcp", "response_flags": "-"}


def test_outbound_over_hbone_to_a_service() -> None:
    pod = pod_proxy(SLEEP, "sleep-6d4c8b7f9-abcde", SLEEP_IP)
    assert pod.meshpath is not None
    target = pod.meshpath.mesh.table.route((VIP, 80), pod.meshpath.workload())
    assert target.hbone and target.addr == (ECHO_IP, 8080)
    got = named(pod.outbound_labels(target.addr[0], target, mtls=True))
    assert got == {"reporter": "source", **SLEEP_SIDE, "source_principal": SLEEP_ID,
                   **ECHO_SERVICE, **ECHO_SIDE, **TCP,
                   "connection_security_policy": "mutual_tls"}


def test_outbound_to_a_pod_ip_names_no_service() -> None:
    pod = pod_proxy(SLEEP, "sleep-6d4c8b7f9-abcde", SLEEP_IP)
    assert pod.meshpath is not None
    target = pod.meshpath.mesh.table.route((ECHO_IP, 8080), pod.meshpath.workload())
    got = named(pod.outbound_labels(ECHO_IP, target, mtls=True))
    assert got == {"reporter": "source", **SLEEP_SIDE, "source_principal": SLEEP_ID,
                   **NO_SERVICE, **ECHO_SIDE, **TCP,
                   "connection_security_policy": "mutual_tls"}


def test_outbound_plaintext_to_a_workload_outside_hbone() -> None:
    """A known workload not on HBONE: named, its identity too, but no mTLS and no source
    principal (ztunnel: OutboundProtocol::TCP)."""
    pod = pod_proxy(SLEEP, "sleep-6d4c8b7f9-abcde", SLEEP_IP)
    assert pod.meshpath is not None
    target = pod.meshpath.mesh.table.route((LEGACY_IP, 5432), pod.meshpath.workload())
    assert not target.hbone
    got = named(pod.outbound_labels(LEGACY_IP, target))
    assert got["source_principal"] == "unknown"
    assert got["connection_security_policy"] == "unknown"
    assert (got["destination_workload"], got["destination_workload_namespace"],
            got["destination_principal"], got["destination_canonical_revision"]) == (
        "db", "legacy", "spiffe://cluster.local/ns/legacy/sa/db", "latest")


def test_outbound_passthrough_to_an_unknown_address() -> None:
    pod = pod_proxy(SLEEP, "sleep-6d4c8b7f9-abcde", SLEEP_IP)
    assert pod.meshpath is not None
    target = pod.meshpath.mesh.table.route((OUTSIDER, 443), pod.meshpath.workload())
    got = named(pod.outbound_labels(OUTSIDER, target))
    dest = {k: v for k, v in got.items() if k.startswith("destination_")}
    assert set(dest.values()) == {"unknown"} and len(dest) == 13
    assert got["source_workload"] == "sleep"


@pytest.mark.parametrize("host,port,service", [
    (ECHO_HOST, 8080, ECHO_SERVICE),   # the client named it (Forwarded: host=)
    ("", 8080, ECHO_SERVICE),          # the service whose target port was dialled
    ("", 9090, {"destination_service": "echo-admin.default.svc.cluster.local",
                "destination_service_name": "echo-admin",
                "destination_service_namespace": "default"}),  # a named targetPort
    ("", 7070, NO_SERVICE),            # a port no service of echo targets
    ("other.default.svc.cluster.local", 7070, NO_SERVICE),  # a host that is not echo's
], ids=["forwarded-host", "target-port", "named-port", "no-service", "foreign-host"])
def test_inbound_over_hbone(host: str, port: int, service: dict[str, str]) -> None:
    pod = pod_proxy(ECHO, "echo-7f9c-xyz12", ECHO_IP)
    got = named(pod.inbound_labels(SLEEP_IP, (ECHO_IP, port), peer=SLEEP_ID, host=host,
                                   mtls=True))
    assert got == {"reporter": "destination", **SLEEP_SIDE, "source_principal": SLEEP_ID,
                   **service, **ECHO_SIDE, **TCP, "connection_security_policy": "mutual_tls"}


def test_inbound_plaintext_from_outside_the_mesh() -> None:
    pod = pod_proxy(ECHO, "echo-7f9c-xyz12", ECHO_IP)
    got = named(pod.inbound_labels(OUTSIDER, (ECHO_IP, 8080)))
    src = {k: v for k, v in got.items() if k.startswith("source_")}
    assert set(src.values()) == {"unknown"} and len(src) == 10
    assert got["connection_security_policy"] == "unknown"
    assert {k: got[k] for k in ECHO_SIDE} == ECHO_SIDE
    assert {k: got[k] for k in ECHO_SERVICE} == ECHO_SERVICE


def test_without_a_control_plane_the_pods_names_from_zds() -> None:
    pod = pod_proxy(None, "sleep-6d4c8b7f9-abcde", SLEEP_IP, with_mesh=False)
    got = named(pod.outbound_labels(ECHO_IP))
    assert (got["source_workload"], got["source_workload_namespace"],
            got["destination_workload"], got["destination_workload_namespace"]) == (
        "sleep-6d4c8b7f9-abcde", "default", "echo-7f9c-xyz12", "default")
    rest = {k: v for k, v in got.items() if k not in (
        "reporter", "source_workload", "source_workload_namespace", "destination_workload",
        "destination_workload_namespace", "request_protocol", "response_flags")}
    assert set(rest.values()) == {"unknown"}


def test_a_workload_without_names_reads_unknown_not_empty() -> None:
    bare = Workload(uid="u", name="p", namespace="ns", addresses=("10.0.0.1",))
    labels = metrics.traffic_labels("source", metrics.party(bare), metrics.NOBODY, None)
    assert "" not in labels
    got = named(labels)
    assert (got["source_workload"], got["source_canonical_service"],
            got["source_cluster"]) == ("unknown", "unknown", "Kubernetes")


def _value(name: str, labels: tuple[str, ...]) -> float:
    return REGISTRY.get_sample_value(name, dict(zip(metrics.LABELS, labels, strict=True))) or 0.0


def test_connection_counts_and_bytes_as_ztunnel() -> None:
    """Opened once, bytes as they flow (received: client to server; sent: server to
    client), closed once with its flags; bytes always on the "-" series."""
    labels = metrics.traffic_labels("destination", metrics.pod_party("c-test", "t"),
                                    metrics.pod_party("s-test", "t"), None)
    denied = metrics.with_flags(labels, metrics.DENY)
    c = metrics.ConnMetrics(labels)
    assert _value("istio_tcp_connections_opened_total", labels) == 1
    c.flush(sent=22, received=11)   # the client sent 11 bytes, got 22 back
    c.flush(sent=22, received=11)   # nothing new: nothing added
    assert _value("istio_tcp_received_bytes_total", labels) == 11
    assert _value("istio_tcp_sent_bytes_total", labels) == 22
    c.close(sent=30, received=11)
    c.close(sent=99, received=99)   # a second close changes nothing
    assert _value("istio_tcp_sent_bytes_total", labels) == 30
    assert _value("istio_tcp_connections_closed_total", labels) == 1
    metrics.ConnMetrics(labels).close(flags=metrics.DENY)
    assert _value("istio_tcp_connections_opened_total", labels) == 2
    assert _value("istio_tcp_connections_closed_total", denied) == 1
    assert _value("istio_tcp_connections_opened_total", denied) == 0
    assert _value("istio_tcp_sent_bytes_total", denied) == 0


def test_forwarded_header_as_ztunnel_builds_and_parses_it() -> None:
    assert forwarded(("127.0.0.1", 80)) == 'for="127.0.0.1:80"'
    assert forwarded(("::1", 80)) == 'for="[::1]:80"'
    assert forwarded(("127.0.0.1", 80), "example.com") == 'for="127.0.0.1:80";host=example.com'
    cases: list[tuple[str, Any]] = [
        ("by=identifier;for=identifier;host=example.com;proto=https", "example.com"),
        ('by=identifier;for=identifier;host="example.com";proto=https', "example.com"),
        ("by=identifier;for=identifier;proto=https", ""),
        ("by=identifier;for=identifier;host=;proto=https", ""),
        ('for=for;by=by;host=host;proto="pröto"', ""),
        (forwarded(("10.1.0.1", 40000), ECHO_HOST), ECHO_HOST),
    ]
    for header, want in cases:
        assert parse_forwarded_host(header) == want, header
