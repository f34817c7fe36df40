"""Two "nodes" on one machine: each node is a netns routing for its pods; pods are lab
netns linked under their node; the two nodes are joined by one link.

    pod a (198.18.41.1) ─ node1 ─(198.18.42.0/24)─ node2 ─ pod b (198.18.43.1)

Agents and proxies run in the host netns with their own sockets and ports (see
docs/architecture.md "The mesh path" for why that is equivalent for the data path: the
proxy's sockets are made inside the pod netns, so where its process runs changes nothing
on the wire). Only 198.18.0.0/15 addresses are used; Lab.close() deletes everything.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyroute2 import IPRoute

from agent.lab import Lab, Node
from agent.redirect.netns import entered

VIP = "198.19.41.10"


@dataclass
class Topology:
    lab: Lab
    node1: Node
    node2: Node
    a: Node
    b: Node


def _route(node: Node, dst: str, gw: str) -> None:
    with entered(node.path), IPRoute() as ipr:
        ipr.route("add", dst=dst, gateway=gw)


def _forward(node: Node) -> None:
    with entered(node.path), open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write("1")


def build(lab: Lab) -> Topology:
    n1, n2 = lab.node("n1"), lab.node("n2")
    a, b = lab.node("a"), lab.node("b")
    lab.link(a, n1, subnet=41, ipv6=False)     # a = .41.1, node1 = .41.2
    lab.link(n1, n2, subnet=42, ipv6=False)    # node1 = .42.1, node2 = .42.2
    lab.link(b, n2, subnet=43, ipv6=False)     # b = .43.1, node2 = .43.2
    for n in (n1, n2):
        _forward(n)
    _route(a, "default", "198.18.41.2")
    _route(b, "default", "198.18.43.2")
    _route(n1, "198.18.43.0/24", "198.18.42.2")
    _route(n2, "198.18.41.0/24", "198.18.42.1")
    return Topology(lab, n1, n2, a, b)
