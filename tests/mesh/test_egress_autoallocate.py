"""Issue 16 egress end to end: a ServiceEntry without addresses, its auto-allocated VIP, DNS
capture, and the mesh-wide outboundTrafficPolicy flag, with real processes.

    pod a (sleep, captured, DNS capture on) ─ node1 ─ node2 ─ b (198.18.43.1: not in the
                                               │               mesh, the "external" host:
                         control plane ────────┘               9000 "external", 9001 "other")

The real `meshnode controlplane` reads a ServiceEntry in the shape of Istio's egress docs
(`api.external.test`, resolution DNS, its endpoint b's address, no `addresses`), allocates a
VIP for it, and serves it over Delta ADS to node1's real agent, which hands it to node1's
real proxy. In pod a, a resolver query for the name (UDP and TCP, to any resolver address:
capture sends port 53 to the proxy's 15053) gets a 240.240.x.x address from the proxy
itself, and a connection to it reaches b:9000. With the default ALLOW_ANY, a connection to
b:9001 (in no registry) passes through. Restarted with `--outbound-traffic-policy
REGISTRY_ONLY`, the control plane gives the same VIP (stateless allocation), the entry is
still reached, and b:9001 is refused and counted at node1's proxy.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.netns import entered
from testing import mesh_manifests as k8s
from testing.lab import Lab
from testing.mesh_procs import ControlPlaneProc, MeshNode, NameServer, wait_for
from testing.mesh_stack import MeshStack
from testing.mesh_topology import Topology, build
from tests.dns.resolver import build_query

HOST = "api.external.test"
EXTERNAL = "198.18.43.1"  # pod b's address; b is no mesh pod here
RESOLVER = "198.18.43.53"  # any address: capture sends port 53 to the proxy

SERVICE_ENTRY = f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: external-api
  namespace: default
spec:
  hosts:
  - {HOST}
  location: MESH_EXTERNAL
  ports:
  - number: 9000
    name: tcp
    protocol: TCP
  resolution: DNS
  endpoints:
  - address: {EXTERNAL}
"""


@dataclass
class PolicyControlPlane(ControlPlaneProc):
    """The lab's control plane with a mesh-wide outboundTrafficPolicy flag."""

    outbound: str = "ALLOW_ANY"

    def _cmd(self, *extra: str) -> list[str]:
        return super()._cmd("--outbound-traffic-policy", self.outbound, *extra)


def with_dns_capture(node: MeshNode) -> None:
    # The two-node harness turns the proxy's DNS server off; this test is about it.
    cfg = yaml.safe_load(node.proxy.config.read_text())
    cfg["dns_capture"] = True
    node.proxy.config.write_text(yaml.safe_dump(cfg))


@dataclass
class Mesh:
    t: Topology
    cp: PolicyControlPlane
    n1: MeshNode

    def resolve(self, tcp: bool = False) -> list[str]:
        """The A records pod a gets for HOST from "its resolver" ([] when no answer)."""
        q = build_query(HOST, 0x5151)
        kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
        with entered(self.t.a.path):
            s = socket.socket(socket.AF_INET, kind)
        with s:
            s.settimeout(2)
            try:
                if tcp:
                    s.connect((RESOLVER, 53))
                    s.sendall(struct.pack("!H", len(q)) + q)
                    msg = b""
                    while len(msg) < 2 or len(msg) < 2 + struct.unpack_from("!H", msg)[0]:
                        chunk = s.recv(4096)
                        if not chunk:
                            return []
                        msg += chunk
                    msg = msg[2:]
                else:
                    s.sendto(q, (RESOLVER, 53))
                    msg = s.recv(4096)
            except OSError:
                return []
        qid, flags, _qd, an = struct.unpack_from("!HHHH", msg)
        assert qid == 0x5151 and flags & 0x8000 and flags & 0xF == 0, msg
        # One question (the query's), then `an` A records of 16 bytes each.
        return [socket.inet_ntoa(msg[len(q) + 16 * i + 12:len(q) + 16 * i + 16])
                for i in range(an)]

    def ask(self, ip: str, port: int) -> str:
        """The name the server at ip:port answers pod a with; "" when the connection is
        reset or closed without one (how a refused connection looks to the app)."""
        with entered(self.t.a.path):
            s = socket.socket()
        with s:
            s.settimeout(5)
            try:
                s.connect((ip, port))
                data = b""
                while chunk := s.recv(100):
                    data += chunk
            except OSError:
                return ""
        return data.decode().strip()

    def refused(self) -> float:
        return self.n1.proxy_metric("meshnode_proxy_traffic_refused_total",
                                    reason="registry_only")

    def egress(self) -> list[dict[str, Any]]:
        status, body = self.n1.proxy.get("/debug/egress")
        assert status == 200, body
        return list(json.loads(body))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp: Path = tmp_path_factory.mktemp("egress")
    with Lab("eg") as lab, MeshStack(tmp) as s:
        t = build(lab)
        cp = s.keep(PolicyControlPlane(tmp / "cp", t.cp))
        cp.write_manifests("mesh.yaml", *k8s.two_nodes(),
                           k8s.pod("sleep", t.a.ip4, "node1", service_account="sleep"))
        cp.write_manifests("egress.yaml", SERVICE_ENTRY)
        cp.start()
        n1 = s.node("node1", t.node1, cp, configure=with_dns_capture)
        s.enroll(n1, t.a, "sleep")
        s.keep(NameServer(t.b, "external", 9000)).start()
        s.keep(NameServer(t.b, "other", 9001)).start()
        yield Mesh(t, cp, n1)


def test_the_entry_resolves_to_its_vip_and_is_reached_and_the_mesh_policy_applies(
        mesh: Mesh) -> None:
    m = mesh
    vips = wait_for(m.resolve, 20, f"{HOST} to resolve through node1's proxy")
    assert len(vips) == 1 and vips[0].startswith("240.240."), vips
    vip = vips[0]
    assert m.resolve(tcp=True) == [vip]  # the same answer over TCP
    # The control plane served the entry with it: the proxy holds the service so.
    services = {s["key"]: s for s in json.loads(m.n1.proxy.get("/debug/services")[1])}
    assert vip in str(services[f"default/{HOST}"]), services[f"default/{HOST}"]
    assert m.ask(vip, 9000) == "external"

    # ALLOW_ANY (the default): a destination in no registry passes through.
    assert m.egress() == []
    assert m.ask(EXTERNAL, 9001) == "other"

    # The control plane again, with the mesh-wide REGISTRY_ONLY flag.
    m.cp.stop()
    m.cp.outbound = "REGISTRY_ONLY"
    m.cp.start()
    wait_for(lambda: [e["mode"] for e in m.egress()] == ["REGISTRY_ONLY"], 30,
             "the mesh default REGISTRY_ONLY to reach node1's proxy")
    # Stateless allocation: the restarted control plane gives the entry the same VIP.
    assert m.resolve() == [vip] and m.resolve(tcp=True) == [vip]
    assert m.ask(vip, 9000) == "external"
    before = m.refused()
    assert m.ask(EXTERNAL, 9001) == ""
    wait_for(lambda: m.refused() == before + 1, 5, "the refusal to be counted")
    refused = [e for e in m.n1.proxy.access_log() if e.get("refused") == "registry_only"]
    assert [e["dst"] for e in refused] == [f"{EXTERNAL}:9001"], refused
