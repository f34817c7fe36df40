"""A small lab of network namespaces joined by veth pairs, for the demo, tests and benchmarks.

Everything it creates carries a unique prefix and is deleted by `close()` (also on errors):
deleting a netns takes its veth ends and rules with it. Addresses come from the benchmark
range 198.18.0.0/15 and ULA fd00::/8, never from the host's networks.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import socket
from dataclasses import dataclass, field
from types import TracebackType

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns

from core import sysctl
from core.netns import entered

IFA_F_NODAD = 0x02  # v6 addresses usable at once, no duplicate-address-detection wait
_seq = itertools.count()


@dataclass
class Node:
    name: str
    ip4: str = ""
    ip6: str = ""
    ifname: str = ""

    @property
    def path(self) -> str:
        return f"/var/run/netns/{self.name}"


@dataclass
class Lab:
    prefix: str = "mn"
    nodes: list[Node] = field(default_factory=list)
    links: int = 0

    def __post_init__(self) -> None:
        self.tag = f"{self.prefix}{os.getpid() % 100000}x{next(_seq)}"

    def node(self, role: str) -> Node:
        node = Node(f"{self.tag}-{role}")
        pr_netns.create(node.name)
        self.nodes.append(node)
        with entered(node.path), IPRoute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        return node

    def link(self, a: Node, b: Node, subnet: int = 0, ipv6: bool = True) -> None:
        """Join a and b with a veth pair, a = 198.18.<subnet>.1, b = .2 (and fd00:…::1/2)."""
        self.links += 1
        ia, ib = f"v{self.tag[-6:]}{self.links}a", f"v{self.tag[-6:]}{self.links}b"
        with IPRoute() as ipr:
            ipr.link("add", ifname=ia, kind="veth", peer=ib)
            for ifn, node in ((ia, a), (ib, b)):
                idx = ipr.link_lookup(ifname=ifn)[0]
                ipr.link("set", index=idx, net_ns_fd=node.name)
        for ifn, node, host in ((ia, a, 1), (ib, b, 2)):
            node.ifname = ifn
            node.ip4 = f"198.18.{subnet}.{host}"
            node.ip6 = str(ipaddress.ip_address(f"fd00:6d6e:{subnet:x}::{host}")) if ipv6 else ""
            with entered(node.path), IPRoute() as ipr:
                idx = ipr.link_lookup(ifname=ifn)[0]
                ipr.addr("add", index=idx, address=node.ip4, prefixlen=24)
                if ipv6:
                    ipr.addr("add", index=idx, address=node.ip6, prefixlen=64,
                             flags=IFA_F_NODAD, family=socket.AF_INET6)
                ipr.link("set", index=idx, state="up")

    @staticmethod
    def route(node: Node, dst: str, gw: str) -> None:
        """`ip route add dst via gw` inside node ("default" for a default route)."""
        with entered(node.path), IPRoute() as ipr:
            ipr.route("add", dst=dst, gateway=gw)

    @staticmethod
    def forward(node: Node) -> None:
        """Let node route between its links (a node netns carrying pods, a router)."""
        with entered(node.path):
            sysctl.write("net.ipv4.ip_forward", "1")

    def drop(self, node: Node) -> None:
        """Delete one node now (its netns, and the veth ends inside it)."""
        with contextlib.suppress(OSError):
            pr_netns.remove(node.name)
        self.nodes.remove(node)

    def close(self) -> None:
        for node in reversed(self.nodes):
            with contextlib.suppress(OSError):
                pr_netns.remove(node.name)
        self.nodes.clear()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
