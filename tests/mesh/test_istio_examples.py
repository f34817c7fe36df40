"""Istio's documentation examples, applied unchanged to the two-node lab through the control
plane's manifests directory (`--config DIR`), and the traffic they allow and refuse, end to
end: real agents, proxies, HBONE between the nodes.

The examples are tests/controlplane/kube/data/istio-docs/*.yaml (their comments say where
each comes from). The lab is shaped to them: its pods live in the namespaces and run as the
service accounts the examples name.

    node1: sleep (default, sa sleep: the principal the ALLOW example names)       a
           sleep (dev, sa sleep: the namespace the DENY example names)            c
    node2: httpbin (foo, sa httpbin; Service httpbin 8000 -> 8080, as Istio's sample) b
           finance (foo, app: finance: what the PeerAuthentication selects)       d
           istio-ingressgateway (istio-system, app: istio-ingressgateway)         e
           outsider (198.18.45.1: never enrolled, plain TCP; the ipBlocks client)  x

Pods in foo, default and dev are ambient by their namespace's label; the gateway pod by its
own label (in Istio the gateway's Envoy enforces `ingress-policy`; here the node proxy
does, so the gateway is a captured pod). httpbin and finance serve 8080 (the port the
examples name) and 9080, the gateway 8080.

What the examples mean at the node proxy (istiod's ambient conversion, docs/control-plane.md):

- authorization-policy.yaml holds three policies all named foo/httpbin, as on the page.
  `kubectl apply -f` of the file leaves the last: DENY `to: POST, port 8080`; the node proxy
  cannot see methods, so a DENY drops them and denies every connection to port 8080 in foo.
  Applied alone (as the page shows them): the ALLOW by principals and namespaces also asks
  for HTTP methods, paths and a JWT claim, so at the node proxy its rule never matches and
  it allows nothing, not even the principal it names (as ztunnel); the DENY from namespace
  dev to POST keeps, once POST is dropped, a `to` that matches nothing, so it denies
  nothing, dev's client included (as ztunnel: an empty match is skipped). None of the
  three, unchanged, allows one principal and refuses the others at the node proxy: that
  case (an ALLOW by principal in Istio's YAML) is test_plaintext_authz.py's.
- authz-ingress-deny.yaml: DENY from ipBlocks `$CLIENT_IP` for the ingress gateway (a
  root-namespace policy with a selector: every matching pod). The data file writes the
  page's `$CLIENT_IP` as 1.2.3.4; the lab sets it, as the page tells the reader to, to its
  client's address (only 198.18.0.0/15 is used here).
- peer-authentication.yaml: STRICT for namespace foo; then STRICT for finance, and, named
  `default` again, STRICT for finance with port 8080 DISABLE. The whole file leaves finance
  STRICT but for 8080, and httpbin without any (the namespace-wide `default` replaced).
- service-entry.yaml: two ServiceEntries (their hosts become services at every agent, with
  their endpoints; the DestinationRule is ignored). Traffic is not routed to them: their
  endpoints (2.2.2.2, 3.3.3.3, public DNS names) are outside the lab's addresses, and the
  mongo entry's VIP is a block (192.192.192.192/24), which the node proxy does not route
  (the agent passes it exact VIPs only, core/mesh/channel.py).

Denials are seen as the client sees them: a reset (tests/mesh/apps.py `outcome`). The tests
share one lab (module fixture); each applies an example as `example.yaml` and removes it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testing import mesh_manifests as k8s
from testing.agent_harness import REPO
from testing.lab import Lab, Node
from testing.mesh_procs import ControlPlaneProc, MeshNode, certs_of, wait_for
from testing.mesh_stack import MeshStack
from testing.mesh_topology import Topology, add_pod, build
from tests.mesh.apps import EchoServer, outcome, sha

# Root is required, not optional: tests/conftest.py fails kernel suites run without it.

DOCS = REPO / "tests" / "controlplane" / "kube" / "data" / "istio-docs"
PAYLOAD = os.urandom(16 * 1024)
HTTPBIN_VIP = "198.19.41.20"
DENIED = "meshnode_proxy_authz_denied_total"

SLEEP_ID = "spiffe://cluster.local/ns/default/sa/sleep"
DEV_SLEEP_ID = "spiffe://cluster.local/ns/dev/sa/sleep"
HTTPBIN_ID = "spiffe://cluster.local/ns/foo/sa/httpbin"
FINANCE_ID = "spiffe://cluster.local/ns/foo/sa/finance"
GATEWAY_ID = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway"


def documents(name: str) -> list[str]:
    """The YAML documents of an example file, each as its text in the file (the first one
    with the file's header comment)."""
    return re.split(r"(?m)^---\n", (DOCS / name).read_text())


@dataclass
class Examples:
    t: Topology
    d: Node  # finance
    e: Node  # istio-ingressgateway
    x: Node  # outsider
    cp: ControlPlaneProc
    n1: MeshNode
    n2: MeshNode

    @property
    def a(self) -> Node:
        return self.t.a

    @property
    def b(self) -> Node:
        return self.t.b

    @property
    def c(self) -> Node:
        assert self.t.c is not None
        return self.t.c

    def go(self, src: Node, dst: Node | str, port: int) -> str:
        """How src's exchange with dst:port ended: "echo" (PAYLOAD came back whole) or the
        kind of failure ("reset", ...)."""
        ip = dst if isinstance(dst, str) else dst.ip4
        kind, detail = outcome(src, ip, port, PAYLOAD)
        if kind == "echo" and detail != sha(PAYLOAD):
            return "short"
        return f"error: {detail}" if kind == "error" else kind

    def policies(self, node: MeshNode) -> list[str]:
        return list(node.proxy_mesh().get("table", {}).get("policies", []))

    def services(self, node: MeshNode) -> dict[str, Any]:
        return dict(node.proxy_mesh().get("table", {}).get("services", {}))

    def denied(self, **labels: str) -> float:
        return self.n2.proxy_metric(DENIED, **labels)

    def apply(self, text: str, policies: list[str]) -> None:
        """`kubectl apply -f example.yaml` with `text`; wait until node2's proxy holds exactly
        `policies`."""
        self.cp.write_manifests("example.yaml", text)
        wait_for(lambda: self.policies(self.n2) == policies, 5,
                 f"node2's proxy to hold the policies {policies}")


def manifests(t: Topology, d: Node, e: Node) -> list[dict[str, Any]]:
    """The lab's pods, namespaces and httpbin's Service (see the module docstring)."""
    assert t.c is not None
    return [*k8s.two_nodes(namespaces=("default", "dev", "foo")),
            k8s.namespace("istio-system", ambient=False),
            k8s.service("httpbin", HTTPBIN_VIP, [(8000, 8080)], ns="foo",
                        selector={"app": "httpbin"}),
            k8s.pod("sleep", t.a.ip4, "node1", service_account="sleep",
                    labels={"app": "sleep"}),
            k8s.pod("sleep", t.c.ip4, "node1", ns="dev", service_account="sleep",
                    labels={"app": "sleep"}),
            k8s.pod("httpbin", t.b.ip4, "node2", ns="foo", service_account="httpbin",
                    labels={"app": "httpbin", "version": "v1"}, ports=[8080, 9080]),
            k8s.pod("finance", d.ip4, "node2", ns="foo", service_account="finance",
                    labels={"app": "finance"}, ports=[8080, 9080]),
            k8s.pod("istio-ingressgateway", e.ip4, "node2", ns="istio-system",
                    service_account="istio-ingressgateway",
                    labels={"app": "istio-ingressgateway", "istio": "ingressgateway",
                            **k8s.AMBIENT}, ports=[8080])]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Examples]:
    tmp: Path = tmp_path_factory.mktemp("istio-examples")
    with Lab("ie") as netns, MeshStack(tmp) as s:
        t = build(netns, pod_c=True)
        assert t.c is not None
        d = add_pod(t, "d", t.node2, 46)
        e = add_pod(t, "e", t.node2, 47)
        x = add_pod(t, "x", t.node2, 45)  # never enrolled: a client outside the mesh
        cp = s.control_plane(t.cp, *manifests(t, d, e), name="lab.yaml")
        n1 = s.node("node1", t.node1, cp)
        n2 = s.node("node2", t.node2, cp)
        for node, pod, ns, name in ((n1, t.a, "default", "sleep"), (n1, t.c, "dev", "sleep"),
                                    (n2, t.b, "foo", "httpbin"), (n2, d, "foo", "finance"),
                                    (n2, e, "istio-system", "istio-ingressgateway")):
            s.enroll(node, pod, name, f"c-{ns}-{name}", namespace=ns, uid=f"uid-{ns}-{name}")
        for pod, port in ((t.b, 8080), (t.b, 9080), (d, 8080), (d, 9080), (e, 8080)):
            s.keep(EchoServer(pod, port))
        wait_for(lambda: {SLEEP_ID, DEV_SLEEP_ID} <= certs_of(n1)
                 and {HTTPBIN_ID, FINANCE_ID, GATEWAY_ID} <= certs_of(n2), 15,
                 "both proxies to hold their pods' certificates")
        yield Examples(t, d, e, x, cp, n1, n2)


@pytest.fixture
def m(lab: Examples) -> Iterator[Examples]:
    """Each test starts with no example applied and every client reaching every app; it
    ends with its example removed (`kubectl delete -f example.yaml`)."""

    def clean() -> None:
        lab.cp.remove_manifests("example.yaml")
        wait_for(lambda: lab.policies(lab.n1) == [] and lab.policies(lab.n2) == [], 5,
                 "no policy at either proxy")
        paths = ((lab.a, lab.b, 8080), (lab.x, lab.b, 8080), (lab.c, lab.d, 9080),
                 (lab.x, lab.e, 8080), (lab.a, HTTPBIN_VIP, 8000))
        try:
            wait_for(lambda: all(lab.go(*p) == "echo" for p in paths), 5,
                     "every client to reach the apps with no example applied")
        except AssertionError:
            assert_outcomes(lab, [(*p, "echo") for p in paths])  # names the failing ones
            raise

    clean()
    try:
        yield lab
    finally:
        clean()


def assert_outcomes(m: Examples, expected: list[tuple[Node, Node | str, int, str]]) -> None:
    """Every (src, dst, port) ends as expected; all are tried, the mismatches listed."""
    names = {id(n): n.name.rsplit("-", 1)[-1] for n in (m.a, m.b, m.c, m.d, m.e, m.x)}
    wrong = []
    for src, dst, port, want in expected:
        got = m.go(src, dst, port)
        if got != want:
            where = dst if isinstance(dst, str) else names[id(dst)]
            wrong.append(f"{names[id(src)]} -> {where}:{port}: {got}, not {want}")
    assert not wrong, "; ".join(wrong)


def eventually(m: Examples, src: Node, dst: Node, port: int, kind: str) -> None:
    """Wait for the first sign of an example in force (a workload's binding to a
    policy can arrive just after the policy itself)."""
    wait_for(lambda: m.go(src, dst, port) == kind, 5,
             f"{src.name} -> {dst.name}:{port} to end as {kind}")


def test_authorization_policy_file_applied_whole_denies_port_8080_in_foo(m: Examples) -> None:
    """The three documents share a name: the last one stays, a DENY to port 8080 (its
    POST dropped at the node proxy) for every workload in foo, from anyone."""
    m.apply((DOCS / "authorization-policy.yaml").read_text(), ["foo/httpbin"])
    assert "AuthorizationPolicy foo/httpbin: duplicate" in m.cp.log.read_text()
    eventually(m, m.a, m.b, 8080, "reset")
    labels = {"policy": "foo/httpbin", "reason": "denied_by_policy"}
    before = m.denied(**labels)
    assert_outcomes(m, [
        (m.a, m.b, 8080, "reset"),           # the principal the page's ALLOW names
        (m.a, HTTPBIN_VIP, 8000, "reset"),   # the Service's port 8000 is the pod's 8080
        (m.c, m.b, 8080, "reset"),
        (m.x, m.b, 8080, "reset"),           # plaintext, from outside the mesh
        (m.a, m.d, 8080, "reset"),           # finance: foo as well
        (m.a, m.b, 9080, "echo"),            # another port
        (m.x, m.b, 9080, "echo"),
        (m.a, m.e, 8080, "echo"),            # another namespace
    ])
    assert m.denied(**labels) == before + 5
    assert m.denied(source_principal=SLEEP_ID, destination_principal=HTTPBIN_ID,
                    **labels) >= 2


def test_allow_by_principals_with_http_rules_allows_nothing_at_the_node_proxy(m: Examples) -> None:
    """The page's first example alone: ALLOW from principal default/sleep or namespace test,
    but only GET /info* or POST /data with a Google-issued JWT. The node proxy sees no
    HTTP, so the rule can never match: the ALLOW policy allows nothing in foo, and every
    client is reset, the named principal too (istiod drops such a rule for ztunnel)."""
    doc = documents("authorization-policy.yaml")[0]
    assert "action: ALLOW" in doc and 'principals: ["cluster.local/ns/default/sa/sleep"]' in doc
    m.apply(doc, ["foo/httpbin"])
    eventually(m, m.a, m.b, 8080, "reset")
    labels = {"policy": "", "reason": "not_allowed"}
    before = m.denied(**labels)
    assert_outcomes(m, [
        (m.a, m.b, 8080, "reset"),
        (m.a, m.b, 9080, "reset"),
        (m.a, HTTPBIN_VIP, 8000, "reset"),
        (m.c, m.b, 8080, "reset"),
        (m.x, m.b, 8080, "reset"),
        (m.a, m.d, 9080, "reset"),
        (m.a, m.e, 8080, "echo"),            # not in foo: no policy
        (m.x, m.e, 8080, "echo"),
    ])
    assert m.denied(**labels) == before + 6
    assert m.denied(source_principal=SLEEP_ID, destination_principal=HTTPBIN_ID,
                    **labels) >= 3


def test_deny_from_dev_for_post_denies_nothing_at_the_node_proxy(m: Examples) -> None:
    """The page's second example alone: DENY from namespace dev to POST. The node proxy
    sees no methods: the `to` left has no condition and matches nothing, so the rule never
    does; the policy is served and every client, dev's too, reaches foo's apps."""
    doc = documents("authorization-policy.yaml")[1]
    assert "action: DENY" in doc and 'namespaces: ["dev"]' in doc and "ports" not in doc
    m.apply(doc, ["foo/httpbin"])
    before = m.denied(policy="foo/httpbin")
    assert_outcomes(m, [
        (m.c, m.b, 8080, "echo"),
        (m.c, m.b, 9080, "echo"),
        (m.c, HTTPBIN_VIP, 8000, "echo"),
        (m.c, m.d, 9080, "echo"),
        (m.a, m.b, 8080, "echo"),
        (m.x, m.b, 8080, "echo"),
    ])
    assert m.denied(policy="foo/httpbin") == before
    assert m.policies(m.n2) == ["foo/httpbin"]  # still in force after the calls


def test_deny_by_ip_blocks_refuses_the_listed_client(m: Examples) -> None:
    """authz-ingress-deny.yaml for the ingress gateway. As the data file has it
    (`$CLIENT_IP` written 1.2.3.4) it is served and refuses nobody here; with `$CLIENT_IP`
    the outsider's address, as the page has the reader set it, the outsider is reset at the
    gateway and nowhere else, and the mesh clients reach the gateway."""
    text = (DOCS / "authz-ingress-deny.yaml").read_text()
    m.apply(text, ["istio-system/ingress-policy"])
    labels = {"policy": "istio-system/ingress-policy", "reason": "denied_by_policy"}
    before = m.denied(**labels)
    assert_outcomes(m, [(m.x, m.e, 8080, "echo"), (m.a, m.e, 8080, "echo")])
    assert m.denied(**labels) == before
    assert text.count('ipBlocks: ["1.2.3.4"]') == 1
    m.apply(text.replace('ipBlocks: ["1.2.3.4"]', f'ipBlocks: ["{m.x.ip4}"]'),
            ["istio-system/ingress-policy"])
    eventually(m, m.x, m.e, 8080, "reset")
    before = m.denied(**labels)
    assert_outcomes(m, [
        (m.x, m.e, 8080, "reset"),
        (m.a, m.e, 8080, "echo"),            # HBONE from a mesh pod
        (m.c, m.e, 8080, "echo"),
        (m.x, m.b, 8080, "echo"),            # the selector picks the gateway only
        (m.x, m.d, 9080, "echo"),
    ])
    assert m.denied(source_principal="", destination_principal=GATEWAY_ID, **labels) \
        == before + 1


def test_strict_peer_authentication_refuses_plaintext_and_admits_hbone(m: Examples) -> None:
    """The page's first example alone: STRICT for namespace foo. The outsider's plaintext
    is reset by every pod in foo; HBONE from the mesh pods gets through; the gateway, in
    another namespace, still takes plaintext."""
    doc = documents("peer-authentication.yaml")[0]
    assert "mode: STRICT" in doc and "selector" not in doc
    m.apply(doc, ["istio-system/istio_converted_static_strict"])
    eventually(m, m.x, m.b, 8080, "reset")
    labels = {"policy": "istio-system/istio_converted_static_strict",
              "reason": "denied_by_policy", "source_principal": ""}
    before = m.denied(**labels)
    assert_outcomes(m, [
        (m.x, m.b, 8080, "reset"),
        (m.x, m.b, 9080, "reset"),
        (m.x, m.d, 8080, "reset"),
        (m.x, m.d, 9080, "reset"),
        (m.a, m.b, 8080, "echo"),
        (m.a, HTTPBIN_VIP, 8000, "echo"),
        (m.c, m.d, 9080, "echo"),
        (m.x, m.e, 8080, "echo"),
    ])
    assert m.denied(**labels) == before + 4


def test_peer_authentication_file_applied_whole_leaves_finance_strict_but_8080(
        m: Examples) -> None:
    """The whole file: `default` in foo is replaced by the finance one with port 8080
    DISABLE (and `finance` loses to it, the older by name). finance refuses plaintext but on
    8080; httpbin has no PeerAuthentication left and takes plaintext."""
    m.apply((DOCS / "peer-authentication.yaml").read_text(),
            ["foo/converted_peer_authentication_default",
             "istio-system/istio_converted_static_strict"])
    eventually(m, m.x, m.d, 9080, "reset")
    labels = {"policy": "foo/converted_peer_authentication_default",
              "reason": "denied_by_policy", "source_principal": ""}
    before = m.denied(**labels)
    assert_outcomes(m, [
        (m.x, m.d, 9080, "reset"),
        (m.x, m.d, 8080, "echo"),            # portLevelMtls 8080: DISABLE
        (m.a, m.d, 9080, "echo"),            # HBONE
        (m.a, m.d, 8080, "echo"),
        (m.x, m.b, 8080, "echo"),            # httpbin: no PeerAuthentication left
        (m.x, m.b, 9080, "echo"),
    ])
    assert m.denied(**labels) == before + 1


SE_HOSTS = ["api.dropboxapi.com", "www.googleapis.com", "api.facebook.com"]
SE_UID = "Kubernetes/networking.istio.io/ServiceEntry/default"


def test_service_entries_are_served_at_both_agents(m: Examples) -> None:
    """service-entry.yaml: three DNS hosts on 443 (one workload each, by hostname) and
    mymongodb.somedomain on the VIP block 192.192.192.192/24 with two static endpoints.
    Both agents get the four services and five workloads, both proxies index them with
    their endpoints, the DNS hosts with auto-allocated VIPs; the DestinationRule next to
    them is read, its TLS settings named as not applied. Removed, they are gone."""
    nodes = (m.n1, m.n2)
    counts = {n.name: (n.agent_mesh()["services"], n.agent_mesh()["workloads"])
              for n in nodes}
    keys = [f"default/{h}" for h in [*SE_HOSTS, "mymongodb.somedomain"]]
    m.cp.write_manifests("example.yaml", (DOCS / "service-entry.yaml").read_text())

    def served(n: MeshNode) -> bool:
        services = m.services(n)
        return all(k in services for k in keys)

    wait_for(lambda: all(served(n) for n in nodes), 5, "the ServiceEntries at both proxies")
    vips: dict[str, list[str]] = {}
    for n in nodes:
        services = m.services(n)
        for host in SE_HOSTS:
            got = services[f"default/{host}"]
            assert got["endpoints"] == [f"{SE_UID}/external-svc-https/{host}"], n.name
            # No `addresses`, resolution DNS: a VIP pair auto-allocated as Istio's DNS
            # proxying does, one in 240.240.0.0/16 and one in 2001:2::/48, the same at
            # both nodes.
            v4, v6 = got["vips"]
            assert ipaddress.ip_address(v4) in ipaddress.ip_network("240.240.0.0/16"), v4
            assert ipaddress.ip_address(v6) in ipaddress.ip_network("2001:2::/48"), v6
            assert vips.setdefault(host, got["vips"]) == got["vips"], (n.name, host)
        mongo = services["default/mymongodb.somedomain"]
        assert sorted(mongo["endpoints"]) == [
            f"{SE_UID}/external-svc-mongocluster/2.2.2.2",
            f"{SE_UID}/external-svc-mongocluster/3.3.3.3"], n.name
        services_before, workloads_before = counts[n.name]
        info = n.agent_mesh()
        assert (info["services"], info["workloads"]) == (services_before + 4,
                                                         workloads_before + 5), n.name
    assert len({v for pair in vips.values() for v in pair}) == 2 * len(SE_HOSTS)
    # The DestinationRule next to them is read; its client TLS is the sidecar's business,
    # not the node proxy's: said once, the rest of the rule (nothing else) served.
    wait_for(lambda: "DestinationRule default/mtls-mongocluster: spec.trafficPolicy.tls: "
             "not applied by the node proxy" in m.cp.log.read_text(), 5,
             "the control plane to say what it does not apply")
    m.cp.remove_manifests("example.yaml")

    def gone(n: MeshNode) -> bool:
        info = n.agent_mesh()
        return (not any(k in m.services(n) for k in keys)
                and (info["services"], info["workloads"]) == counts[n.name])

    wait_for(lambda: all(gone(n) for n in nodes), 5, "the ServiceEntries to be gone")
