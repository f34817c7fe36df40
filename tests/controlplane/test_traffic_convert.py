"""controlplane/traffic: Istio's VirtualService, DestinationRule and Sidecar, written as in
Istio's documentation (istio.io tasks "TCP Traffic Shifting", "Circuit Breaking", the
DestinationRule and Sidecar references), converted to the records the node proxy acts on;
bad input refused with the field named, and the last good version kept in force.

The YAML is in the shape of istio.io's examples (facts, not copied text: names and numbers
as those pages use them)."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
import yaml

from controlplane.ambient.index import Index
from controlplane.kube.objects import KINDS, ObjectStore, kind_of
from controlplane.traffic.index import TrafficIndex
from core.mesh.traffic import (
    MAX_CONNECTIONS_UNLIMITED,
    ConnectionPool,
    ConsistentHash,
    EgressHost,
    EgressListener,
    EgressPolicy,
    L4Match,
    L4Route,
    LoadBalancer,
    OutboundMode,
    OutlierDetection,
    RouteDestination,
    RouteKind,
    SimpleLb,
    Subset,
    WorkloadLabels,
)

BY_NAME = {k.kind: k for k in KINDS}
HOST = "tcp-echo.istio-io-tcp-traffic-shifting.svc.cluster.local"
NS = "istio-io-tcp-traffic-shifting"

MESH = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}, labels: {{istio.io/dataplane-mode: ambient}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: tcp-echo, namespace: {NS}}}
spec:
  clusterIP: 10.96.0.20
  selector: {{app: tcp-echo}}
  ports: [{{name: tcp, port: 9000}}, {{name: tcp-other, port: 9001}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: tcp-echo-v1
  namespace: {NS}
  labels: {{app: tcp-echo, version: v1, pod-template-hash: abc}}
spec: {{nodeName: node-a, serviceAccountName: default, containers: [{{name: app, image: app}}]}}
status: {{phase: Running, podIP: 10.0.0.11}}
---
apiVersion: v1
kind: Pod
metadata:
  name: tcp-echo-v2
  namespace: {NS}
  labels: {{app: tcp-echo, version: v2}}
spec: {{nodeName: node-b, serviceAccountName: default, containers: [{{name: app, image: app}}]}}
status: {{phase: Running, podIP: 10.0.0.12}}
---
apiVersion: v1
kind: Pod
metadata:
  name: curl
  namespace: {NS}
  labels: {{app: curl}}
spec: {{nodeName: node-a, serviceAccountName: curl, containers: [{{name: app, image: app}}]}}
status: {{phase: Running, podIP: 10.0.0.13}}
"""

# istio.io "TCP Traffic Shifting": tcp-echo-destination and the 80/20 VirtualService
# (here 90/10, the canary).
CANARY_DR = f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: tcp-echo-destination, namespace: {NS}}}
spec:
  host: tcp-echo
  subsets:
  - name: v1
    labels: {{version: v1}}
  - name: v2
    labels: {{version: v2}}
"""


def canary_vs(w1: int, w2: int, api: str = "networking.istio.io/v1") -> str:
    return f"""
apiVersion: {api}
kind: VirtualService
metadata: {{name: tcp-echo, namespace: {NS}}}
spec:
  hosts: [tcp-echo]
  tcp:
  - match:
    - port: 9000
    route:
    - destination: {{host: tcp-echo, port: {{number: 9000}}, subset: v1}}
      weight: {w1}
    - destination: {{host: tcp-echo, port: {{number: 9000}}, subset: v2}}
      weight: {w2}
"""


class World:
    """An ObjectStore fed with YAML, the ambient index and the traffic index over it."""

    def __init__(self, *docs: str) -> None:
        self.store = ObjectStore()
        self.put(*docs)
        self.ambient = Index(self.store)
        self.traffic = TrafficIndex(self.store, self.ambient)

    def put(self, *docs: str) -> None:
        for doc in docs:
            for obj in yaml.safe_load_all(textwrap.dedent(doc)):
                if obj:
                    kind = kind_of(obj)
                    assert kind is not None, obj
                    self.store.put(kind, obj)

    def delete(self, kind: str, ns: str, name: str) -> None:
        self.store.delete(BY_NAME[kind], ns, name)


def test_canary_90_10_by_subsets_v1_v2() -> None:
    w = World(MESH, CANARY_DR, canary_vs(90, 10))
    t = w.traffic.traffic[f"{NS}/{HOST}"]
    key = f"{NS}/{HOST}"
    assert t.routes == (L4Route(RouteKind.TCP, (
        RouteDestination(key, "v1", 9000, 90), RouteDestination(key, "v2", 9000, 10)),
        (L4Match(port=9000),), f"{NS}/tcp-echo/tcp/0"),)
    assert t.subsets == (Subset("v1", (("version", "v1"),)), Subset("v2", (("version", "v2"),)))
    assert t.virtual_service == f"{NS}/tcp-echo"
    assert t.destination_rule == f"{NS}/tcp-echo-destination"
    assert t.traffic_policy is None
    # the subsets read `version`: each pod's version label is sent, and nothing else of it
    uid = f"Kubernetes//Pod/{NS}/tcp-echo-v1"
    assert w.traffic.labels[uid] == WorkloadLabels(uid, (("version", "v1"),))
    assert f"Kubernetes//Pod/{NS}/curl" not in w.traffic.labels  # no version label
    assert not w.traffic.errors


def test_older_api_versions_read_the_same() -> None:
    for api in ("networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"):
        w = World(MESH, CANARY_DR.replace("networking.istio.io/v1", api), canary_vs(90, 10, api))
        assert [d.weight for d in w.traffic.traffic[f"{NS}/{HOST}"].routes[0].destinations] \
            == [90, 10]


def test_weights_moved_by_an_edit_are_a_delta_of_that_service() -> None:
    w = World(MESH, CANARY_DR, canary_vs(90, 10))
    seen: list[Any] = []
    w.traffic.subscribe(seen.append)
    w.put(canary_vs(50, 50))
    assert len(seen) == 1
    (rec,) = seen[0].updated
    assert [d.weight for d in rec.routes[0].destinations] == [50, 50]
    assert seen[0].removed == []


def test_weights_not_summing_to_100_are_relative_as_in_istio() -> None:
    # Istio accepts 30/30 (no validation error) and splits 50/50; only an all-zero split is
    # refused.
    w = World(MESH, CANARY_DR, canary_vs(30, 30))
    assert not w.traffic.errors
    assert w.traffic.traffic[f"{NS}/{HOST}"].routes[0].total_weight == 60


def test_tls_route_by_sni() -> None:
    # istio.io VirtualService reference, "TLSRoute": SNI-matched routes, not terminated.
    w = World(MESH, """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: prod}
spec: {clusterIP: 10.96.0.30, ports: [{name: tls, port: 443}]}
---
apiVersion: v1
kind: Service
metadata: {name: login, namespace: prod}
spec: {clusterIP: 10.96.0.31, ports: [{name: tls, port: 443}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo-sni, namespace: prod}
spec:
  hosts: ["*.bookinfo.com", web]
  tls:
  - match:
    - port: 443
      sniHosts: [login.bookinfo.com]
    route:
    - destination: {host: login}
  - match:
    - port: 443
      sniHosts: [reviews.bookinfo.com]
    route:
    - destination: {host: web}
""")
    t = w.traffic.traffic["prod/web.prod.svc.cluster.local"]
    assert [r.kind for r in t.routes] == [RouteKind.TLS, RouteKind.TLS]
    assert t.routes[0].matches == (L4Match(port=443, sni_hosts=("login.bookinfo.com",)),)
    assert t.routes[0].destinations == (
        RouteDestination("prod/login.prod.svc.cluster.local"),)
    assert not w.traffic.errors


def test_destination_rule_policies() -> None:
    # istio.io "Circuit Breaking" (maxConnections 1, consecutive5xxErrors 1, interval 1s,
    # baseEjectionTime 3m, maxEjectionPercent 100) and the DestinationRule reference's
    # LEAST_REQUEST / consistentHash useSourceIp / portLevelSettings examples.
    w = World(MESH, f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: tcp-echo, namespace: {NS}}}
spec:
  host: tcp-echo.{NS}.svc.cluster.local
  trafficPolicy:
    loadBalancer: {{simple: LEAST_REQUEST}}
    connectionPool:
      tcp: {{maxConnections: 1, connectTimeout: 30ms}}
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
    portLevelSettings:
    - port: {{number: 9001}}
      loadBalancer:
        consistentHash: {{useSourceIp: true}}
  subsets:
  - name: v2
    labels: {{version: v2}}
    trafficPolicy:
      loadBalancer: {{simple: ROUND_ROBIN}}
""")
    t = w.traffic.traffic[f"{NS}/{HOST}"]
    tp = t.traffic_policy
    assert tp is not None
    assert tp.load_balancer == LoadBalancer(SimpleLb.LEAST_REQUEST)
    assert tp.connection_pool == ConnectionPool(1, 0.03)
    assert tp.outlier_detection == OutlierDetection(
        consecutive_5xx_errors=1, interval=1.0, base_ejection_time=180.0,
        max_ejection_percent=100)
    port = tp.for_port(9001)
    assert port is not None and port.connection_pool is None
    assert port.load_balancer == LoadBalancer(consistent_hash=ConsistentHash(True, 1024))
    sub = t.subset("v2")
    assert sub is not None and sub.traffic_policy is not None
    assert sub.traffic_policy.load_balancer == LoadBalancer(SimpleLb.ROUND_ROBIN)
    assert sub.traffic_policy.connection_pool is None  # unset: the rule's applies
    assert t.routes == ()
    assert not w.traffic.errors


def test_connection_pool_defaults_are_istios() -> None:
    w = World(MESH, f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: tcp-echo, namespace: {NS}}}
spec:
  host: tcp-echo
  trafficPolicy:
    connectionPool: {{tcp: {{maxConnections: 0}}}}
    outlierDetection: {{consecutiveGatewayErrors: 2}}
""")
    tp = w.traffic.traffic[f"{NS}/{HOST}"].traffic_policy
    assert tp is not None
    assert tp.connection_pool == ConnectionPool(MAX_CONNECTIONS_UNLIMITED, 10.0)
    assert tp.outlier_detection == OutlierDetection(consecutive_5xx_errors=5,
                                                    consecutive_gateway_errors=2)


SE = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external-svc-https, namespace: egress}
spec:
  hosts: [api.dropboxapi.com, www.googleapis.com]
  location: MESH_EXTERNAL
  ports: [{number: 443, name: https, protocol: TLS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wikipedia, namespace: egress}
spec:
  hosts: ["*.wikipedia.org"]
  ports: [{number: 443, name: https, protocol: TLS}]
  resolution: NONE
"""


def test_sidecar_registry_only_with_egress_hosts() -> None:
    # istio.io Sidecar reference: a namespace default importing its own namespace and
    # istio-system, REGISTRY_ONLY; a workload-selected one for the ratings app.
    w = World(MESH, SE, """
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: prod-us1}
spec:
  egress:
  - hosts: ["./*", "istio-system/*", "egress/api.dropboxapi.com"]
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: ratings, namespace: prod-us1}
spec:
  workloadSelector:
    labels: {app: ratings}
  egress:
  - port: {number: 9080, protocol: HTTP, name: egresshttp}
    hosts: ["prod-us1/*"]
  - hosts: ["istio-system/*"]
""")
    assert w.traffic.egress["prod-us1/default"] == EgressPolicy(
        "prod-us1", "default", OutboundMode.REGISTRY_ONLY, (EgressListener((
            EgressHost(".", "*"), EgressHost("istio-system", "*"),
            EgressHost("egress", "api.dropboxapi.com"))),))
    ratings = w.traffic.egress["prod-us1/ratings"]
    # an unset outboundTrafficPolicy is the mesh's (ALLOW_ANY), not the namespace default's
    assert ratings.mode == OutboundMode.ALLOW_ANY
    assert ratings.selector == (("app", "ratings"),)
    assert [ln.port for ln in ratings.listeners] == [9080, 0]
    assert "mesh default" not in w.traffic.egress  # ALLOW_ANY mesh: nothing to say
    assert not w.traffic.errors


def test_root_namespace_sidecar_is_the_mesh_default() -> None:
    w = World(MESH, """
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: istio-system}
spec:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
""")
    assert w.traffic.egress == {"mesh default": EgressPolicy("", "", OutboundMode.REGISTRY_ONLY)}


def test_mesh_config_registry_only_without_sidecars() -> None:
    store = ObjectStore()
    t = TrafficIndex(store, Index(store), mesh_mode=OutboundMode.REGISTRY_ONLY)
    assert t.egress == {"mesh default": EgressPolicy("", "", OutboundMode.REGISTRY_ONLY)}


def test_service_entry_dns_and_none_hosts_are_routable_services() -> None:
    # resolution DNS without endpoints or addresses, and NONE with a wildcard host: both are
    # services the proxy can route to and import by name; a rule for them converts.
    w = World(MESH, SE, """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dropbox, namespace: egress}
spec:
  host: api.dropboxapi.com
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 10}}
""")
    svc = w.ambient.services["egress/api.dropboxapi.com"]
    assert svc.ports[0].service_port == 443
    assert w.ambient.services["egress/*.wikipedia.org"].vips == ()
    # the DNS host has a workload per host to connect to (no endpoints listed)
    dns = [x for x in w.ambient.workloads.values() if x.hostname == "api.dropboxapi.com"]
    assert len(dns) == 1 and "egress/api.dropboxapi.com" in dict(dns[0].services)
    tp = w.traffic.traffic["egress/api.dropboxapi.com"].traffic_policy
    assert tp is not None and tp.connection_pool == ConnectionPool(10, 10.0)
    assert not w.traffic.errors


def test_no_rules_no_records() -> None:
    w = World(MESH)
    assert w.traffic.records() == []


def test_a_rule_for_a_service_that_appears_later_applies_then() -> None:
    w = World(CANARY_DR, f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n")
    assert w.traffic.traffic == {}
    w.put(MESH)
    assert f"{NS}/{HOST}" in w.traffic.traffic
    w.delete("Service", NS, "tcp-echo")
    assert w.traffic.traffic == {}


# ---- bad input: refused with the field named, the last good kept --------------------------

BAD = [
    # (the bad object, the line expected in errors)
    (canary_vs(0, 0), f"VirtualService {NS}/tcp-echo: spec.tcp[0].route: total destination "
                      "weight = 0"),
    (canary_vs(90, 10).replace("subset: v2", "subset: v3"),
     f"VirtualService {NS}/tcp-echo: spec.tcp[0].route[1].destination.subset: Referenced "
     f'host+subset in destinationrule not found: "{HOST}+v3"'),
    (canary_vs(90, 10).replace("weight: 10", "weight: -10"),
     f"VirtualService {NS}/tcp-echo: spec.tcp[0].route[1].weight: weight -10 < 0"),
    (canary_vs(90, 10).replace("- port: 9000", "- destinationSubnets: [10.0.0.300/8]"),
     f"VirtualService {NS}/tcp-echo: spec.tcp[0].match[0].destinationSubnets[0]: "
     "'10.0.0.300/8' is not an IP address or CIDR"),
    (canary_vs(90, 10).replace("tcp:", "tls:"),
     f"VirtualService {NS}/tcp-echo: spec.tls[0].match[0].sniHosts: TLS match must have at "
     "least one SNI host"),
    (CANARY_DR.replace("name: v2", "name: v1"),
     f"DestinationRule {NS}/tcp-echo-destination: spec.subsets[1].name: duplicate subset "
     "names: v1"),
    (CANARY_DR + "  trafficPolicy:\n    connectionPool: {tcp: {connectTimeout: 10us}}\n",
     f"DestinationRule {NS}/tcp-echo-destination: spec.trafficPolicy.connectionPool.tcp."
     "connectTimeout: duration must be greater than 1ms"),
    (CANARY_DR + "  trafficPolicy:\n    outlierDetection: {maxEjectionPercent: 101}\n",
     f"DestinationRule {NS}/tcp-echo-destination: spec.trafficPolicy.outlierDetection."
     "maxEjectionPercent: percentage 101 is not in range 0..100"),
    (CANARY_DR + "  trafficPolicy:\n    connectionPool: {tcp: {maxConnections: -1}}\n",
     f"DestinationRule {NS}/tcp-echo-destination: spec.trafficPolicy.connectionPool.tcp."
     "maxConnections: max connections must be non-negative"),
    (CANARY_DR + "  trafficPolicy: {}\n",
     f"DestinationRule {NS}/tcp-echo-destination: spec.trafficPolicy: traffic policy must "
     "have at least one field"),
]


@pytest.mark.parametrize(("bad", "line"), BAD, ids=[b[1].split(": ", 1)[1][:50] for b in BAD])
def test_bad_update_is_refused_and_the_last_good_stays(bad: str, line: str) -> None:
    w = World(MESH, CANARY_DR, canary_vs(90, 10))
    before = dict(w.traffic.traffic)
    seen: list[Any] = []
    w.traffic.subscribe(seen.append)
    w.put(bad)
    assert w.traffic.errors == (line + " (the last good version stays in force)",)
    assert w.traffic.traffic == before
    assert seen == []  # nothing changed for the agents
    # fixed: the error goes, the object is read again
    w.put(CANARY_DR, canary_vs(80, 20))
    assert not w.traffic.errors
    assert [d.weight for d in w.traffic.traffic[f"{NS}/{HOST}"].routes[0].destinations] \
        == [80, 20]


@pytest.mark.parametrize(("bad", "line"), BAD[:4], ids=["weight0", "subset", "neg", "cidr"])
def test_bad_object_without_a_good_version_has_no_effect(bad: str, line: str) -> None:
    w = World(MESH, CANARY_DR, bad)
    assert w.traffic.errors == (line,)
    assert w.traffic.traffic[f"{NS}/{HOST}"].routes == ()


def test_bad_sidecar_is_refused() -> None:
    w = World(MESH, """
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: prod}
spec:
  egress:
  - hosts: [nohost]
""")
    assert w.traffic.errors == (
        "Sidecar prod/default: spec.egress[0].hosts[0]: host must be of form "
        "namespace/dnsName",)
    assert w.traffic.egress == {}


def test_dropping_a_subset_a_route_uses_keeps_the_routes_consistent() -> None:
    # The DestinationRule loses v2 (a valid rule by itself): the VirtualService routing to v2
    # is now refused, and its last good version, converted again, refers to v2 too: so it has
    # no effect, rather than routes to a subset the proxy does not have.
    w = World(MESH, CANARY_DR, canary_vs(90, 10))
    w.put(CANARY_DR.replace("  - name: v2\n    labels: {version: v2}\n", ""))
    t = w.traffic.traffic[f"{NS}/{HOST}"]
    assert [s.name for s in t.subsets] == ["v1"]
    assert t.routes == ()
    assert len(w.traffic.errors) == 1 and "v2" in w.traffic.errors[0]


def test_deleted_rule_removes_its_records_and_labels() -> None:
    w = World(MESH, CANARY_DR, canary_vs(90, 10))
    seen: list[Any] = []
    w.traffic.subscribe(seen.append)
    w.delete("VirtualService", NS, "tcp-echo")
    w.delete("DestinationRule", NS, "tcp-echo-destination")
    assert w.traffic.records() == []
    removed = [r for d in seen for r in d.removed]
    assert ("traffic", f"{NS}/{HOST}") in removed
    assert ("labels", f"Kubernetes//Pod/{NS}/tcp-echo-v1") in removed


def test_pod_label_change_is_a_labels_delta() -> None:
    w = World(MESH, CANARY_DR)
    seen: list[Any] = []
    w.traffic.subscribe(seen.append)
    w.put(MESH.replace("labels: {app: tcp-echo, version: v2}", "labels: {app: tcp-echo, "
                                                                "version: v3}"))
    uid = f"Kubernetes//Pod/{NS}/tcp-echo-v2"
    assert [r for d in seen for r in d.updated] == [WorkloadLabels(uid, (("version", "v3"),))]
