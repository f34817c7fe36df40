"""The demo's machine-in-a-machine: two nodes, a control plane and one non-mesh host, each
a network namespace, joined by veth links (the layout of testing/mesh_topology.py, with pods
on a per-node bridge made by the CNI chain instead of hand-made links).

    pods 198.18.41.0/24 ─ [bridge] node1 ─(198.18.42.0/24)─ node2 [bridge] ─ pods 198.18.43.0/24
                                   │                           │
                   control plane 198.18.40.1          outside 198.18.44.1 (not in the mesh)

The pod subnets exist only once containerd's bridge plugin creates the bridges inside the
node netns (the node is the gateway, .1); the routes between nodes are set up front, so a
pod on node1 reaches node2's pods, the control plane and the outside host through the nodes.
Only 198.18.0.0/15 (benchmark range) is used; Lab.close() deletes every netns and with it
the veths, bridges and routes.
"""

from __future__ import annotations

from dataclasses import dataclass

from testing.lab import Lab, Node

CONTROL_PLANE_IP = "198.18.40.1"
OUTSIDE_IP = "198.18.44.1"
POD_SUBNETS = {"node1": "198.18.41.0/24", "node2": "198.18.43.0/24"}


@dataclass
class Topology:
    lab: Lab
    nodes: dict[str, Node]  # "node1", "node2" -> the node's netns
    cp: Node                # the control plane's netns; cp.ip4 == CONTROL_PLANE_IP
    outside: Node           # a host outside the mesh; outside.ip4 == OUTSIDE_IP



def build(lab: Lab) -> Topology:
    n1, n2 = lab.node("node1"), lab.node("node2")
    cp, out = lab.node("cp"), lab.node("outside")
    lab.link(n1, n2, subnet=42, ipv6=False)   # node1 = .42.1, node2 = .42.2
    lab.link(cp, n1, subnet=40, ipv6=False)   # control plane = .40.1, node1 = .40.2
    lab.link(out, n2, subnet=44, ipv6=False)  # outside = .44.1, node2 = .44.2
    assert cp.ip4 == CONTROL_PLANE_IP and out.ip4 == OUTSIDE_IP
    for n in (n1, n2):
        Lab.forward(n)
    Lab.route(cp, "default", "198.18.40.2")
    Lab.route(out, "default", "198.18.44.2")
    Lab.route(n1, POD_SUBNETS["node2"], "198.18.42.2")
    Lab.route(n1, "198.18.44.0/24", "198.18.42.2")
    Lab.route(n2, POD_SUBNETS["node1"], "198.18.42.1")
    Lab.route(n2, "198.18.40.0/24", "198.18.42.1")
    return Topology(lab, {"node1": n1, "node2": n2}, cp, out)
