"""Mesh file validation: every error names the file, the line and the field."""

from __future__ import annotations

import ipaddress
import textwrap

import pytest

from controlplane import mesh
from core.mesh.model import StringKind, StringMatch
from tests.controlplane.harness import EXAMPLE


def parse(text: str) -> mesh.Mesh:
    return mesh.parse(textwrap.dedent(text), "m.yaml")


def test_example_file_parses_with_links() -> None:
    m = mesh.load(EXAMPLE)
    assert [w.name for w in m.workloads] == ["sleep", "echo-1", "echo-2"]
    echo1 = m.workloads[1]
    assert echo1.uid == "Kubernetes//Pod/default/echo-1"
    assert echo1.node == "node2" and echo1.service_account == "echo"
    assert echo1.ips == [ipaddress.ip_address("10.1.2.2")]
    # The service's selector and the policy's selector both pick the echo workloads only.
    assert echo1.services == ["default/echo.default.svc.cluster.local"]
    assert echo1.policies == ["default/echo-from-sleep"]
    assert m.workloads[0].services == [] and m.workloads[0].policies == []
    svc = m.services[0]
    assert svc.key == "default/echo.default.svc.cluster.local"
    assert svc.ports == [mesh.PortSpec(80, 8080, "tcp")]
    pol = m.policies[0]
    assert (pol.action, pol.scope) == ("allow", "workload")
    assert pol.rules[0].sources[0].principals == (
        StringMatch(StringKind.EXACT, "cluster.local/ns/default/sa/sleep"),)
    assert pol.rules[0].destinations[0].destination_ports == (8080,)
    assert m.has_identity_on_node("default", "echo", "node1")
    assert not m.has_identity_on_node("default", "sleep", "node2")


def test_empty_file_is_an_empty_mesh() -> None:
    assert mesh.parse("", "m.yaml") == mesh.Mesh()


WL = """\
workloads:
  - name: a
    ips: [10.0.0.1]
    node: n1
"""

LB = """\
services:
  - name: s
    ports: [{port: 80}]
    load_balancing:
"""

BAD = [
    # (file text, expected "line: field: message" fragment)
    ("workloads:\n  - name: a\n    ips: [10.0.0.1]\n    node: n1\n    nod: x\n",
     "m.yaml:5: workloads[0].nod: unknown field"),
    ("workloads:\n  - name: a\n    ips: [10.0.0.300]\n    node: n1\n",
     "m.yaml:3: workloads[0].ips[0]: '10.0.0.300' is not an IP address"),
    ("workloads:\n  - name: a\n    ips: [10.0.0.1]\n",
     "m.yaml:2: workloads[0]: missing required field 'node'"),
    ("services:\n  - name: s\n    ports:\n      - port: 70000\n",
     "m.yaml:4: services[0].ports[0].port: 70000 is out of range 1..65535"),
    ("services:\n  - name: s\n    ports:\n      - port: http\n",
     "m.yaml:4: services[0].ports[0].port: expected an integer, got 'http'"),
    ("services:\n  - name: s\n    ports: []\n",
     "m.yaml:3: services[0].ports: a service needs at least one port"),
    (WL + "    services: [nope]\n",
     "m.yaml:5: workloads[0].services[0]: no service 'nope' in namespace 'default'"),
    (WL + "  - name: a\n    ips: [10.0.0.2]\n    node: n2\n",
     "m.yaml:5: workloads[1]: uid 'Kubernetes//Pod/default/a' already used on line 2"),
    (WL + "  - name: b\n    ips: [10.0.0.1]\n    node: n2\n",
     "m.yaml:5: workloads[1]: IP 10.0.0.1 already used by workload"),
    ("policies:\n  - name: p\n    action: permit\n",
     "m.yaml:3: policies[0].action: 'permit' is not one of allow, deny"),
    ("policies:\n  - name: p\n    action: deny\n    scope: workload\n",
     "m.yaml:2: policies[0]: scope 'workload' needs a 'selector'"),
    ("policies:\n  - name: p\n    action: deny\n    rules:\n      - from:\n"
     "          - ips: [10.0.0.0/33]\n",
     "m.yaml:6: policies[0].rules[0].from[0].ips[0]: '10.0.0.0/33' is not a CIDR"),
    ("policies:\n  - name: p\n    action: deny\n    rules:\n      - to:\n          - {}\n",
     "m.yaml:6: policies[0].rules[0].to[0]: an empty destination"),
    ("workloads:\n  name: a\n", "m.yaml:2: workloads: expected a list, got a mapping"),
    ("services:\n  - name: s s\n    ports: [{port: 1}]\n",
     "m.yaml:2: services[0].name: 's s' must be non-empty"),
    ("workloads: [\n", "m.yaml:2: (yaml):"),
    ("debug:\n  malformed_resources:\n    - {type: cluster, name: x}\n",
     "m.yaml:3: debug.malformed_resources[0].type: 'cluster' is not one of address"),
    (WL + "    locality: {region: us-east, zon: a}\n",
     "m.yaml:5: workloads[0].locality.zon: unknown field (allowed: region, subzone, zone)"),
    (WL + "    locality:\n      region: us east\n",
     "m.yaml:6: workloads[0].locality.region: 'us east' must be non-empty"),
    (WL + "    locality: {}\n",
     "m.yaml:5: workloads[0].locality: an empty locality"),
    (WL + "    locality: us-east/a\n",
     "m.yaml:5: workloads[0].locality: expected a mapping, got 'us-east/a'"),
    (WL + "    cluster: ''\n",
     "m.yaml:5: workloads[0].cluster: '' must be non-empty"),
    (LB + "      routing_preference: [zone, rack]\n      mode: failover\n",
     "m.yaml:5: services[0].load_balancing.routing_preference[1]: 'rack' is not one of region"),
    (LB + "      routing_preference: [zone, zone]\n      mode: failover\n",
     "m.yaml:5: services[0].load_balancing.routing_preference[1]: scope 'zone' listed twice"),
    (LB + "      routing_preference: [node]\n",
     "m.yaml:5: services[0].load_balancing.routing_preference: applies only with mode strict "
     "or failover, not 'unspecified'"),
    (LB + "      mode: strict\n",
     "m.yaml:5: services[0].load_balancing.mode: mode 'strict' needs a routing_preference"),
    (LB + "      mode: nearest\n",
     "m.yaml:5: services[0].load_balancing.mode: 'nearest' is not one of unspecified"),
    (LB + "      health_policy: some\n",
     "m.yaml:5: services[0].load_balancing.health_policy: 'some' is not one of only_healthy"),
]


@pytest.mark.parametrize(("text", "expected"), BAD, ids=[e.split(": ")[1] for _, e in BAD])
def test_bad_file_names_line_and_field(text: str, expected: str) -> None:
    with pytest.raises(mesh.MeshError) as exc:
        mesh.parse(text, "m.yaml")
    assert expected in str(exc.value)


def test_explicit_service_reference_and_policy_fields() -> None:
    m = parse("""\
        services:
          - {name: db, namespace: data, ports: [{port: 5432}], vips: ["fd00::10"]}
        workloads:
          - name: db-0
            namespace: app
            ips: [10.0.0.5, "fd00::5"]
            node: n1
            services: [data/db]
            status: unhealthy
            tunnel: none
        policies:
          - name: deny-outsiders
            namespace: data
            action: DENY
            scope: namespace
            dry_run: yes
            rules:
              - from:
                  - not_namespaces: [data, "kube-*"]
                    ips: [10.0.0.0/8]
                to:
                  - not_ports: [22]
              - {}
        """)
    wl = m.workloads[0]
    assert wl.services == ["data/db.data.svc.cluster.local"]
    assert not wl.healthy and not wl.hbone
    assert m.services[0].ports == [mesh.PortSpec(5432, 5432)]
    pol = m.policies[0]
    assert pol.action == "deny" and pol.dry_run
    assert pol.rules[0].sources[0].not_namespaces == (
        StringMatch(StringKind.EXACT, "data"), StringMatch(StringKind.PREFIX, "kube-"))
    assert pol.rules[0].sources[0].source_ips == (ipaddress.ip_network("10.0.0.0/8"),)
    assert pol.rules[1] == mesh.RuleSpec([], [])


def test_locality_cluster_and_load_balancing() -> None:
    m = parse("""\
        cluster_id: east
        services:
          - name: echo
            ports: [{port: 80}]
            load_balancing:
              mode: FAILOVER
              routing_preference: [network, region, zone, subzone]
              health_policy: allow_all
          - name: local
            ports: [{port: 81}]
            load_balancing: {mode: strict, routing_preference: [node]}
          - name: plain
            ports: [{port: 82}]
            load_balancing: {mode: passthrough}
        workloads:
          - name: a
            ips: [10.0.0.1]
            node: n1
            locality: {region: us-east-1, zone: us-east-1a, subzone: rack_7}
          - name: b
            ips: [10.0.0.2]
            node: n2
            cluster: west
            locality: {zone: z1}
          - name: c
            ips: [10.0.0.3]
            node: n2
        """)
    echo, local, plain = m.services
    assert (echo.lb_mode, echo.lb_health) == ("failover", "allow_all")
    assert echo.lb_routing == ["network", "region", "zone", "subzone"]
    assert (local.lb_mode, local.lb_routing) == ("strict", ["node"])
    assert (plain.lb_mode, plain.lb_routing) == ("passthrough", [])
    a, b, c = m.workloads
    assert a.locality == ("us-east-1", "us-east-1a", "rack_7") and a.cluster == ""
    assert a.uid == "east//Pod/default/a"
    assert b.locality == ("", "z1", "") and b.cluster == "west"
    assert b.uid == "west//Pod/default/b"  # the workload's own cluster names its uid
    assert c.locality is None
