"""Pod, WorkloadEntry, ServiceEntry endpoints and EndpointSlice -> Workload.

Facts from istio/istio pilot/pkg/serviceregistry/ambient/workloads_test.go (TestPodWorkloads,
TestWorkloadEntryWorkloads, TestServiceEntryWorkloads, TestEndpointSliceWorkloads),
ambientindex_workloadentry_test.go (empty-address entries), ambientindex_test.go
(TestAmbientIndex_Policy: selector policies from the workload's and the root namespace),
pkg/kube/util_test.go (workload names of controlled pods) and istio-cni's default enablement
selectors (enrollment). Inputs and expected records are written here, in our model.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from controlplane.ambient import Options
from core.mesh.model import Port, TunnelProtocol, Workload, WorkloadStatus
from meshpb.istio import workload_pb2 as wl
from tests.controlplane.ambient.kube import (
    authorization_policy,
    convert,
    endpoint_slice,
    namespace,
    node,
    pod,
    service,
    service_entry,
    workload_entry,
)

OPTS = Options(cluster_id="cluster0", domain_suffix="domain.suffix")
NETWORK = [namespace("istio-system", {"topology.istio.io/network": "testnetwork"})]
BASE = Workload(uid="cluster0//Pod/ns/name", name="name", namespace="ns",
                addresses=("1.2.3.4",), network="testnetwork", canonical_name="name",
                canonical_revision="latest", workload_type=wl.POD, workload_name="name",
                status=WorkloadStatus.HEALTHY, cluster_id="cluster0")
UNHEALTHY = replace(BASE, status=WorkloadStatus.UNHEALTHY)
FOO = replace(BASE, canonical_name="foo")
SVC = "ns/svc.ns.svc.domain.suffix"


def one(objs: list[dict[str, Any]], uid: str, options: Options = OPTS) -> Workload | None:
    state = convert(*NETWORK, *objs, options=options)
    assert not state.errors
    return state.workloads.get(uid)


POD_CASES: list[tuple[str, list[dict[str, Any]], Workload | None]] = [
    ("pending pod without an IP is no workload",
     [pod("name", ip=None, phase="Pending", ready=False)], None),
    ("pending pod with an IP is an unhealthy workload",
     [pod("name", phase="Pending", ready=False)], UNHEALTHY),
    ("running pod not ready", [pod("name", ready=False)], UNHEALTHY),
    ("terminating pod is unhealthy",
     [pod("name", meta={"deletionTimestamp": "2024-01-01T00:00:00Z"})], UNHEALTHY),
    ("finished pod is no workload", [pod("name", phase="Succeeded")], None),
    ("failed pod is no workload", [pod("name", phase="Failed")], None),
    ("pod from a replicaset is named after it",
     [pod("rs-xvnqd", ready=False, meta={"generateName": "rs-", "ownerReferences": [
         {"kind": "ReplicaSet", "apiVersion": "apps/v1", "name": "rs", "controller": True}]})],
     replace(UNHEALTHY, uid="cluster0//Pod/ns/rs-xvnqd", name="rs-xvnqd",
             canonical_name="rs", workload_name="rs")),
    ("pod of a deployment: the replicaset's template hash is dropped",
     [pod("web-5d8f-x", labels={"pod-template-hash": "5d8f"}, meta={
         "generateName": "web-5d8f-", "ownerReferences": [
             {"kind": "ReplicaSet", "name": "web-5d8f", "controller": True}]})],
     replace(BASE, uid="cluster0//Pod/ns/web-5d8f-x", name="web-5d8f-x",
             canonical_name="web", workload_name="web")),
    ("pod of a cronjob: the job's timestamp is dropped",
     [pod("nightly-28373760-abc", meta={"generateName": "nightly-28373760-", "ownerReferences": [
         {"kind": "Job", "name": "nightly-28373760", "controller": True}]})],
     replace(BASE, uid="cluster0//Pod/ns/nightly-28373760-abc", name="nightly-28373760-abc",
             canonical_name="nightly", workload_name="nightly")),
    ("canonical name and revision labels win over app and version",
     [pod("name", labels={"app": "a", "version": "v1",
                          "service.istio.io/canonical-name": "cn",
                          "service.istio.io/canonical-revision": "cr"})],
     replace(BASE, canonical_name="cn", canonical_revision="cr")),
    ("app.kubernetes.io labels before app and version",
     [pod("name", labels={"app": "a", "version": "v1", "app.kubernetes.io/name": "k",
                          "app.kubernetes.io/version": "kv"})],
     replace(BASE, canonical_name="k", canonical_revision="kv")),
    ("pod with a service",
     [pod("name", labels={"app": "foo"}),
      service("svc", selector={"app": "foo"}, ports=[{"port": 80, "targetPort": 8080}])],
     replace(FOO, services=((SVC, (Port(80, 8080),)),))),
    ("named target ports resolve against the pod's container ports",
     [pod("name", labels={"app": "foo"}, ports={"81-target": 9090}),
      service("svc", selector={"app": "foo"}, ports=[
          {"name": "80", "port": 80, "targetPort": 8080},
          {"name": "81", "port": 81, "targetPort": "81-target"},     # found: 9090
          {"name": "82", "port": 82, "targetPort": "82-target"}])],  # not found: left out
     replace(FOO, services=((SVC, (Port(80, 8080), Port(81, 9090))),))),
    ("a ServiceEntry selecting a pod maps its port name to the container port",
     [pod("httpbin-123", "httpbin2", ip="10.1.1.1", labels={"app": "httpbin"},
          ports={"http": 8000}),
      service_entry("httpbin", "httpbin2", hosts=["httpbin.httpbin2.mesh.internal"],
                    ports=[{"number": 8002, "name": "http"}],
                    workloadSelector={"labels": {"app": "httpbin"}}, resolution="STATIC")],
     replace(BASE, uid="cluster0//Pod/httpbin2/httpbin-123", name="httpbin-123",
             namespace="httpbin2", addresses=("10.1.1.1",), canonical_name="httpbin",
             workload_name="httpbin-123",
             services=(("httpbin2/httpbin.httpbin2.mesh.internal", (Port(8002, 8000),)),))),
    ("a service in another namespace does not select the pod",
     [pod("name", labels={"app": "foo"}),
      service("svc", "other", selector={"app": "foo"})], FOO),
    ("locality from the node's topology labels",
     [pod("name", ready=False, node="node"),
      node("node", {"topology.kubernetes.io/region": "region",
                    "topology.kubernetes.io/zone": "zone",
                    "topology.istio.io/subzone": "subzone"})],
     replace(UNHEALTHY, node="node", locality=("region", "zone", "subzone"))),
    ("a node without topology labels gives no locality",
     [pod("name", node="node"), node("node", {"kubernetes.io/hostname": "node"})],
     replace(BASE, node="node")),
    ("selector policies of its namespace and the root namespace, sorted",
     [pod("name", labels={"app": "foo"}),
      authorization_policy("wrong-ns", "not-ns", selector={"matchLabels": {"app": "foo"}}),
      authorization_policy("local-ns", "ns", selector={"matchLabels": {"app": "foo"}}),
      authorization_policy("local-ns-wrong-labels", "ns",
                           selector={"matchLabels": {"app": "not-foo"}}),
      authorization_policy("root-ns", "istio-system", selector={"matchLabels": {"app": "foo"}}),
      authorization_policy("namespace-wide", "ns")],  # NAMESPACE scope: not listed
     replace(FOO, authorization_policies=("istio-system/root-ns", "ns/local-ns"))),
    ("selectorless service joined through an EndpointSlice that targets the pod",
     [pod("pod-123", "default", labels={"app": "foo"}),
      service("svc", "default", ports=[{"name": "http", "port": 80, "targetPort": 80}]),
      endpoint_slice("svc-123", "default", service="svc", endpoints=[
          {"addresses": ["1.2.3.4"], "conditions": {"ready": True},
           "targetRef": {"kind": "Pod", "name": "pod-123", "namespace": "default"}}],
          ports=[{"name": "http", "protocol": "TCP", "port": 80}])],
     replace(FOO, uid="cluster0//Pod/default/pod-123", name="pod-123", namespace="default",
             workload_name="pod-123",
             services=(("default/svc.default.svc.domain.suffix", (Port(80, 80),)),))),
    ("an EndpointSlice with the pod's IP but no targetRef does not join it",
     [pod("pod-123", "default", labels={"app": "foo"}),
      service("svc", "default", ports=[{"name": "http", "port": 80, "targetPort": 80}]),
      endpoint_slice("svc-123", "default", service="svc", endpoints=[
          {"addresses": ["1.2.3.4"], "conditions": {"ready": True}}],
          ports=[{"name": "http", "protocol": "TCP", "port": 80}])],
     replace(FOO, uid="cluster0//Pod/default/pod-123", name="pod-123", namespace="default",
             workload_name="pod-123")),
    ("host network pod: HOST_NETWORK, and slices of other pods with its IP do not matter",
     [pod("pod-123", "default", ip="1.1.1.1", labels={"app": "foo"},
          spec={"hostNetwork": True}),
      service("svc", "default", selector={"app": "foo"},
              ports=[{"name": "80", "port": 80, "targetPort": 80}]),
      service("kubernetes", "default", cluster_ip="1.2.3.4",
              ports=[{"name": "https", "port": 443, "targetPort": 6443}]),
      endpoint_slice("kubernetes", "default", service="kubernetes", endpoints=[
          {"addresses": ["1.1.1.1"], "conditions": {"ready": True}}],
          ports=[{"name": "https", "protocol": "TCP", "port": 6443}]),
      endpoint_slice("some-other-svc", "default", service="some-other-svc", endpoints=[
          {"addresses": ["1.1.1.1"], "conditions": {"ready": True},
           "targetRef": {"kind": "Pod", "name": "not-the-same-pod", "namespace": "default"}}])],
     replace(FOO, uid="cluster0//Pod/default/pod-123", name="pod-123", namespace="default",
             addresses=("1.1.1.1",), workload_name="pod-123", network_mode=wl.HOST_NETWORK,
             services=(("default/svc.default.svc.domain.suffix", (Port(80, 80),)),))),
    ("service account and node from the spec; dual-stack IPs from podIPs",
     [pod("name", spec={"serviceAccountName": "sa1"}, node="n1",
          status={"podIPs": [{"ip": "1.2.3.4"}, {"ip": "fd00::1"}]})],
     replace(BASE, service_account="sa1", node="n1", addresses=("1.2.3.4", "fd00::1"))),
]


@pytest.mark.parametrize("objs,want", [(o, w) for _, o, w in POD_CASES],
                         ids=[c[0] for c in POD_CASES])
def test_pod_workload(objs: list[dict[str, Any]], want: Workload | None) -> None:
    uid = want.uid if want is not None else "cluster0//Pod/ns/name"
    assert one(objs, uid) == want


ENROLL = "istio.io/dataplane-mode"
REDIRECT = "ambient.istio.io/redirection"
HBONE = int(TunnelProtocol.HBONE)
NONE = int(TunnelProtocol.NONE)


@pytest.mark.parametrize("ns_labels,p,want", [
    ({ENROLL: "ambient"}, pod("name"), (HBONE, False)),
    ({}, pod("name", labels={ENROLL: "ambient"}), (HBONE, False)),
    ({ENROLL: "ambient"}, pod("name", labels={ENROLL: "none"}), (NONE, False)),
    ({}, pod("name"), (NONE, False)),
    ({ENROLL: "none"}, pod("name"), (NONE, False)),
    ({"meshnode.io/dataplane-mode": "enabled"}, pod("name"), (HBONE, False)),
    ({ENROLL: "ambient"}, pod("name", labels={"meshnode.io/dataplane-mode": "disabled"}),
     (NONE, False)),
    ({ENROLL: "ambient"}, pod("name", spec={"hostNetwork": True}), (NONE, False)),
    ({ENROLL: "ambient"}, pod("name", annotations={"sidecar.istio.io/status": "{}"}),
     (NONE, False)),
    # The node agent's annotation is what happened, and wins over the labels.
    ({}, pod("name", annotations={REDIRECT: "enabled"}), (HBONE, False)),
    ({ENROLL: "ambient"}, pod("name", annotations={REDIRECT: "pending"}), (NONE, False)),
    ({ENROLL: "ambient"}, pod("name", annotations={"meshnode.io/redirection": "pending"}),
     (NONE, False)),
    ({}, pod("name", labels={"networking.istio.io/tunnel": "http"}), (HBONE, True)),
], ids=["ns-ambient", "pod-ambient", "pod-opts-out", "no-labels", "ns-none",
        "meshnode-ns", "meshnode-opt-out", "host-network", "sidecar", "annotation-enabled",
        "annotation-pending", "meshnode-annotation-pending", "native-tunnel"])
def test_enrollment(ns_labels: dict[str, str], p: dict[str, Any],
                    want: tuple[int, bool]) -> None:
    w = one([namespace("ns", ns_labels), p], "cluster0//Pod/ns/name")
    assert w is not None
    assert (w.tunnel_protocol, w.native_tunnel) == want


def test_enrollment_by_annotation_only_as_istiod() -> None:
    """With enroll_by_labels off, only the node agent's annotation (istiod's rule) counts."""
    opts = replace(OPTS, enroll_by_labels=False)
    uid = "cluster0//Pod/ns/name"
    labelled = [namespace("ns", {ENROLL: "ambient"})]
    w = one([*labelled, pod("name")], uid, opts)
    assert w is not None and w.tunnel_protocol == NONE
    w = one([*labelled, pod("name", annotations={REDIRECT: "enabled"})], uid, opts)
    assert w is not None and w.tunnel_protocol == HBONE


def test_network_and_trust_domain() -> None:
    state = convert(pod("name"))  # no system namespace: no network; default trust domain
    assert state.workloads["Kubernetes//Pod/ns/name"].network == ""
    assert state.workloads["Kubernetes//Pod/ns/name"].trust_domain == ""
    state = convert(pod("name"), options=Options(trust_domain="example.org"))
    assert state.workloads["Kubernetes//Pod/ns/name"].trust_domain == "example.org"


WE = Workload(uid="cluster0/networking.istio.io/WorkloadEntry/ns/name", name="name",
              namespace="ns", addresses=("1.2.3.4",), network="testnetwork",
              canonical_name="foo", canonical_revision="latest", workload_type=wl.POD,
              workload_name="name", status=WorkloadStatus.HEALTHY, cluster_id="cluster0")
SVC80 = service("svc", selector={"app": "foo"}, ports=[{"port": 80, "targetPort": 8080}])

ENTRY_CASES: list[tuple[str, list[dict[str, Any]], Workload | None]] = [
    ("entry with a service",
     [workload_entry("name", labels={"app": "foo"}, address="1.2.3.4"), SVC80],
     replace(WE, services=((SVC, (Port(80, 8080),)),))),
    ("tunnel label makes it native HBONE",
     [workload_entry("name", labels={"app": "foo", "networking.istio.io/tunnel": "http"},
                     address="1.2.3.4"), SVC80],
     replace(WE, tunnel_protocol=HBONE, native_tunnel=True,
             services=((SVC, (Port(80, 8080),)),))),
    ("entry without labels: canonical name is its name",
     [workload_entry("name", address="1.2.3.4"), SVC80], replace(WE, canonical_name="name")),
    ("labels in the spec count",
     [workload_entry("name", address="1.2.3.4", labels={"app": "foo"}) | {
         "spec": {"address": "1.2.3.4", "labels": {"app": "foo"}}}, SVC80],
     replace(WE, services=((SVC, (Port(80, 8080),)),))),
    ("Service named ports against the entry's ports map",
     [workload_entry("name", labels={"app": "foo"}, address="1.2.3.4",
                     ports={"81": 8180, "82-target": 8280}),
      service("svc", selector={"app": "foo"}, ports=[
          {"name": "80", "port": 80, "targetPort": 8080},
          {"name": "81", "port": 81, "targetPort": 8081},           # name found: 8180
          {"name": "82", "port": 82, "targetPort": "82-target"},    # target found: 8280
          {"name": "83", "port": 83, "targetPort": "83-target"}])],  # not found: left out
     replace(WE, services=((SVC, (Port(80, 8080), Port(81, 8180), Port(82, 8280))),))),
    ("ServiceEntry named ports: unmatched names keep the port",
     [workload_entry("name", labels={"app": "foo"}, address="1.2.3.4", ports={"81": 8180}),
      service_entry("svc", hosts=["hostname"], workloadSelector={"labels": {"app": "foo"}},
                    resolution="STATIC", ports=[{"name": "80", "number": 80, "targetPort": 8080},
                                                {"name": "81", "number": 81},
                                                {"name": "82", "number": 82}])],
     replace(WE, services=(("ns/hostname", (Port(80, 8080), Port(81, 8180), Port(82, 82))),))),
    ("an address that is not an IP is a hostname",
     [workload_entry("name", labels={"app": "foo"}, address="hostname")],
     replace(WE, addresses=(), hostname="hostname")),
    ("no address: no addresses and no hostname",
     [workload_entry("name", labels={"app": "foo"})], replace(WE, addresses=())),
    ("network, service account, weight, locality, workload-name label",
     [workload_entry("name", labels={"app": "foo", "service.istio.io/workload-name": "vm"},
                     address="1.2.3.4", network="remote", serviceAccount="sa1", weight=3,
                     locality="r1/z1")],
     replace(WE, network="remote", service_account="sa1", capacity=3,
             locality=("r1", "z1", ""), workload_name="vm")),
    ("auto-registration group names the workload",
     [workload_entry("name", labels={"app": "foo"}, address="1.2.3.4",
                     annotations={"istio.io/autoRegistrationGroup": "group"})],
     replace(WE, workload_name="group")),
    ("namespace labels do not enroll an entry", [
        namespace("ns", {ENROLL: "ambient"}),
        workload_entry("name", labels={"app": "foo"}, address="1.2.3.4")], WE),
]


@pytest.mark.parametrize("objs,want", [(o, w) for _, o, w in ENTRY_CASES],
                         ids=[c[0] for c in ENTRY_CASES])
def test_workload_entry(objs: list[dict[str, Any]], want: Workload) -> None:
    assert one(objs, WE.uid) == want


def test_service_entry_endpoints() -> None:
    """Inline endpoints are workloads of every served host; with DNS resolution, no endpoints
    and no selector, each host is a workload whose hostname is the host."""
    dns = service_entry("name", hosts=["a.example.com", "b.example.com"],
                        addresses=["1.2.3.4"], ports=[{"number": 80, "name": "http"}],
                        resolution="DNS")
    state = convert(*NETWORK, dns, options=OPTS)
    base = Workload(uid="", name="name", namespace="ns", addresses=(), network="testnetwork",
                    canonical_name="name", canonical_revision="latest", workload_type=wl.POD,
                    workload_name="name", status=WorkloadStatus.HEALTHY, cluster_id="cluster0")
    pre = "cluster0/networking.istio.io/ServiceEntry/ns/name/"
    assert state.workloads == {
        pre + h: replace(base, uid=pre + h, hostname=h,
                         services=((f"ns/{h}", (Port(80, 80),)),))
        for h in ("a.example.com", "b.example.com")}

    static = service_entry("name", hosts=["a.example.com"], addresses=["1.2.3.4"],
                           ports=[{"number": 80, "name": "http"}], resolution="STATIC",
                           endpoints=[{"address": "2.3.4.5"}, {"address": "3.4.5.6"}])
    state = convert(*NETWORK, static, options=OPTS)
    assert state.workloads == {
        pre + ip: replace(base, uid=pre + ip, addresses=(ip,),
                          services=(("ns/a.example.com", (Port(80, 80),)),))
        for ip in ("2.3.4.5", "3.4.5.6")}

    # Deduplicated away (an older entry in the namespace holds the host): no endpoints.
    older = service_entry("older", hosts=["a.example.com"], created="2020-01-01T00:00:00Z",
                          ports=[{"number": 80, "name": "http"}], resolution="STATIC",
                          endpoints=[{"address": "9.9.9.9"}])
    static["metadata"]["creationTimestamp"] = "2024-01-01T00:00:00Z"
    state = convert(*NETWORK, older, static, options=OPTS)
    assert {w.name for w in state.workloads.values()} == {"older"}


def test_endpoint_slice_workloads() -> None:
    """Endpoints that are not pods (the API server's, a selectorless Service's) are
    workloads with no identity, HOST_NETWORK; slice ports join the Service's by name."""
    objs = [service("kubernetes", "default", cluster_ip="1.2.3.4",
                    ports=[{"name": "https", "port": 443, "targetPort": 6443}]),
            endpoint_slice("kubernetes", "default", service="kubernetes", endpoints=[
                {"addresses": ["172.18.0.5"], "conditions": {"ready": True}}],
                ports=[{"name": "https", "protocol": "TCP", "port": 6443}])]
    state = convert(*NETWORK, *objs, options=OPTS)
    uid = "cluster0/discovery.k8s.io/EndpointSlice/default/kubernetes/172.18.0.5"
    assert state.workloads == {uid: Workload(
        uid=uid, name="kubernetes", namespace="default", addresses=("172.18.0.5",),
        network="testnetwork", status=WorkloadStatus.HEALTHY, network_mode=wl.HOST_NETWORK,
        cluster_id="cluster0",
        services=(("default/kubernetes.default.svc.domain.suffix", (Port(443, 6443),)),))}


@pytest.mark.parametrize("slice_,want", [
    (endpoint_slice("s", "default", service=None, endpoints=[{"addresses": ["1.1.1.1"]}]), 0),
    (endpoint_slice("s", "default", service="nosuch", endpoints=[{"addresses": ["1.1.1.1"]}]),
     0),
    (endpoint_slice("s", "default", service="kubernetes", address_type="FQDN",
                    endpoints=[{"addresses": ["example.com"]}]), 0),
    (endpoint_slice("s", "default", service="kubernetes", endpoints=[
        {"addresses": ["1.1.1.1"], "targetRef": {"kind": "Pod", "name": "p"}}]), 0),
    (endpoint_slice("s", "default", service="kubernetes", endpoints=[
        {"addresses": ["1.1.1.1"], "conditions": {"ready": False}},
        {"addresses": ["1.1.1.1"]}, {"addresses": ["1.1.1.2"]}]), 2),
], ids=["not-for-a-service", "unknown-service", "fqdn", "pod-endpoint", "duplicate-ip"])
def test_endpoint_slice_skips(slice_: dict[str, Any], want: int) -> None:
    state = convert(service("kubernetes", "default", cluster_ip="1.2.3.4"), slice_)
    assert len(state.workloads) == want
    if want == 2:
        statuses = sorted((w.addresses[0], w.status) for w in state.workloads.values())
        assert statuses == [("1.1.1.1", WorkloadStatus.UNHEALTHY),
                            ("1.1.1.2", WorkloadStatus.HEALTHY)]


def test_selection_across_kinds_can_be_turned_off() -> None:
    """istiod's PILOT_ENABLE_SERVICEENTRY_SELECT_PODS and PILOT_ENABLE_K8S_SELECT_WORKLOAD_ENTRIES
    (both on by default)."""
    objs = [pod("name", labels={"app": "foo"}),
            workload_entry("name", labels={"app": "foo"}, address="1.2.3.5"),
            service("svc", selector={"app": "foo"}),
            service_entry("se", hosts=["se.example.com"], resolution="STATIC",
                          ports=[{"number": 80, "name": "http"}],
                          workloadSelector={"labels": {"app": "foo"}})]

    def joined(options: Options) -> tuple[set[str], set[str]]:
        state = convert(*objs, options=options)
        return ({k for k, _ in state.workloads["cluster0//Pod/ns/name"].services},
                {k for k, _ in state.workloads[WE.uid].services})

    both = {SVC, "ns/se.example.com"}
    assert joined(OPTS) == (both, both)
    assert joined(replace(OPTS, service_entry_selects_pods=False)) == ({SVC}, both)
    assert joined(replace(OPTS, service_selects_workload_entries=False)) == (
        both, {"ns/se.example.com"})
