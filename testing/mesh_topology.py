"""Two "nodes" on one machine: each node is a netns routing for its pods; pods are lab
netns linked under their node; the two nodes are joined by one link; the control plane has
a netns of its own, attached to node1 and reached by both nodes over the node network.

    pod a (198.18.41.1) ─ node1 ─(198.18.42.0/24)─ node2 ─ pod b (198.18.43.1)
                            │
          control plane (198.18.40.1)

`build(lab, pod_c=True)` adds a third pod on node1, next to a (for tests that need two
endpoints of one service on different nodes, one of them local to the client):

    pod c (198.18.44.1) ─ node1

`add_pod(t, role, t.node2, 46)` links one more netns under a node (198.18.46.1 here).

Each node's agent and proxy run inside that node's netns (testing/mesh_procs.py): their
admin/metrics ports are on the node's own 127.0.0.1, and each agent dials the control plane
at 198.18.40.1 — node1 over its link to the control plane, node2 over the node link and
through node1, so no node reaches it via localhost. The unix sockets between plugin, agent
and proxy (CNI, ZDS, mesh.sock) are filesystem paths, shared by all netns.

Only 198.18.0.0/15 addresses are used; Lab.close() deletes every netns (and with them the
veth pairs and routes).
"""

from __future__ import annotations

from dataclasses import dataclass

from testing.lab import Lab, Node

VIP = "198.19.41.10"
CONTROL_PLANE_IP = "198.18.40.1"


@dataclass
class Topology:
    lab: Lab
    node1: Node
    node2: Node
    a: Node
    b: Node
    cp: Node  # the control plane's netns; cp.ip4 == CONTROL_PLANE_IP
    c: Node | None = None  # a second pod on node1, only with build(lab, pod_c=True)



def build(lab: Lab, pod_c: bool = False) -> Topology:
    n1, n2 = lab.node("n1"), lab.node("n2")
    a, b, cp = lab.node("a"), lab.node("b"), lab.node("cp")
    lab.link(a, n1, subnet=41, ipv6=False)     # a = .41.1, node1 = .41.2
    lab.link(n1, n2, subnet=42, ipv6=False)    # node1 = .42.1, node2 = .42.2
    lab.link(b, n2, subnet=43, ipv6=False)     # b = .43.1, node2 = .43.2
    lab.link(cp, n1, subnet=40, ipv6=False)    # control plane = .40.1, node1 = .40.2
    assert cp.ip4 == CONTROL_PLANE_IP
    for n in (n1, n2):
        Lab.forward(n)
    Lab.route(a, "default", "198.18.41.2")
    Lab.route(b, "default", "198.18.43.2")
    Lab.route(cp, "default", "198.18.40.2")
    Lab.route(n1, "198.18.43.0/24", "198.18.42.2")
    Lab.route(n2, "198.18.41.0/24", "198.18.42.1")
    Lab.route(n2, "198.18.40.0/24", "198.18.42.1")
    c = None
    if pod_c:
        c = lab.node("c")
        lab.link(c, n1, subnet=44, ipv6=False)  # c = .44.1, node1 = .44.2
        Lab.route(c, "default", "198.18.44.2")
        Lab.route(n2, "198.18.44.0/24", "198.18.42.1")
    return Topology(lab, n1, n2, a, b, cp, c)


def add_pod(t: Topology, role: str, on: Node, subnet: int) -> Node:
    """One more netns linked under node `on` (t.node1 or t.node2), pod = 198.18.<subnet>.1,
    routed from the other node: a further pod, or (never enrolled) a client outside the
    mesh. `subnet` must be one no other link of the lab uses (40-44 are taken)."""
    assert on in (t.node1, t.node2) and subnet not in (40, 41, 42, 43, 44)
    other, via = (t.node2, "198.18.42.1") if on is t.node1 else (t.node1, "198.18.42.2")
    p = t.lab.node(role)
    t.lab.link(p, on, subnet=subnet, ipv6=False)  # p = .<subnet>.1, on = .<subnet>.2
    Lab.route(p, "default", f"198.18.{subnet}.2")
    Lab.route(other, f"198.18.{subnet}.0/24", via)
    return p
