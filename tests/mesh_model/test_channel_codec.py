"""Mesh model <-> the agent -> proxy channel's JSON (core/mesh/channel.py): the exact records
on the wire, and both directions giving back what went in."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from typing import Any

import pytest

from core.mesh import channel
from core.mesh.model import (
    Group,
    LbMode,
    LbScope,
    Match,
    Policy,
    PolicyAction,
    PolicyScope,
    Port,
    Rule,
    Service,
    ServiceAccountMatch,
    StringKind,
    StringMatch,
    TunnelProtocol,
    Vip,
    Workload,
    WorkloadStatus,
)

WL = Workload(uid="u1", name="p", namespace="ns", addresses=("10.0.0.1", "fd00::1"),
              node="n1", trust_domain="td", service_account="sa",
              tunnel_protocol=TunnelProtocol.HBONE, status=WorkloadStatus.UNHEALTHY,
              authorization_policies=("ns/allow",),
              services=(("ns/a.svc", (Port(80, 8080),)),), network="net1", cluster_id="c1",
              locality=("r", "z", ""), workload_name="deploy", canonical_name="app",
              canonical_revision="v1",
              # Not on the channel: the proxy does not act on them.
              hostname="p.example", capacity=3, version="v9")
SVC = Service(name="a", namespace="ns", hostname="a.svc",
              vips=(Vip("", "10.96.0.1"), Vip("", "10.200.0.0", 16)),
              ports=(Port(80, 8080), Port(443, 0)), subject_alt_names=("spiffe://td/x",),
              lb_mode=LbMode.FAILOVER, lb_routing_preference=(LbScope.NODE, LbScope.ZONE),
              lb_health_policy=1, version="3")
POL = Policy(name="p", namespace="ns", scope=PolicyScope.NAMESPACE, action=PolicyAction.DENY,
             groups=(Group((Rule((Match(
                 principals=(StringMatch(StringKind.PREFIX, "td/ns/a/"),),
                 not_namespaces=(StringMatch(StringKind.PRESENCE),),
                 service_accounts=(ServiceAccountMatch("a", "b"),),
                 source_ips=(ipaddress.ip_network("10.0.0.0/8"),),
                 not_destination_ports=(22,)),)), Rule(()))), Group(())),
             dry_run=True, version="7")


def wire(d: dict[str, Any]) -> dict[str, Any]:
    """Through JSON text and back, as on the socket (tuples become lists)."""
    out: dict[str, Any] = json.loads(json.dumps(d))
    return out


def test_workload_on_the_wire() -> None:
    assert channel.encode_workload(WL) == {
        "uid": "u1", "name": "p", "ns": "ns", "ips": ["10.0.0.1", "fd00::1"], "node": "n1",
        "id": "spiffe://td/ns/ns/sa/sa", "hbone": True, "healthy": False,
        "pol": ["ns/allow"], "svc": {"ns/a.svc": [[80, 8080]]}, "net": "net1", "cl": "c1",
        "loc": ["r", "z", ""], "wn": "deploy", "cn": "app", "cr": "v1",
        "hn": "p.example"}  # a DNS ServiceEntry's endpoint is dialled by its host name
    bare = Workload(uid="u2", name="q", namespace="ns", addresses=("10.0.0.2",),
                    cluster_id="Kubernetes")
    assert channel.encode_workload(bare) == {
        "uid": "u2", "name": "q", "ns": "ns", "ips": ["10.0.0.2"], "node": "",
        "id": "spiffe://cluster.local/ns/ns/sa/default", "hbone": False, "healthy": True,
        "pol": [], "svc": {}}


def test_service_and_policy_on_the_wire() -> None:
    assert channel.encode_service(SVC) == {
        "key": "ns/a.svc", "name": "a", "ns": "ns", "host": "a.svc",
        "vips": [["", "10.96.0.1"]], "ports": [[80, 8080], [443, 0]], "lb": 2, "health": 1,
        "sans": ["spiffe://td/x"], "rp": [4, 2]}
    assert channel.encode_policy(POL) == {
        "key": "ns/p", "name": "p", "ns": "ns", "scope": 1, "action": 1, "dry_run": True,
        "groups": [[[{"not_namespaces": [["presence", ""]],
                      "principals": [["prefix", "td/ns/a/"]],
                      "service_accounts": [["a", "b"]], "source_ips": ["10.0.0.0/8"],
                      "not_destination_ports": [22]}], []], []]}
    assert json.dumps(channel.encode_policy(POL))  # plain JSON types only


def test_decode_gives_back_what_the_channel_carries() -> None:
    d = channel.Decoder()
    w = d.workload(wire(channel.encode_workload(WL)))
    assert (w.uid, w.name, w.namespace, w.addresses, w.node) == (
        "u1", "p", "ns", ("10.0.0.1", "fd00::1"), "n1")
    assert (w.spiffe_id, w.uses_hbone, w.healthy, w.authorization_policies) == (
        WL.spiffe_id, True, False, ("ns/allow",))
    assert (w.services, w.network, w.cluster, w.locality) == (
        WL.services, "net1", "c1", ("r", "z", ""))
    assert (w.workload_name, w.canonical_name, w.canonical_revision) == ("deploy", "app", "v1")
    assert w.hostname == "p.example"
    assert w.capacity == 1 and w.version == ""  # not on the channel
    s = d.service(wire(channel.encode_service(SVC)))
    assert s.vips == (Vip("", "10.96.0.1"),)  # CIDR VIPs do not travel
    assert (s.key, s.ports, s.lb_mode, s.lb_routing_preference, s.lb_health_policy) == (
        SVC.key, SVC.ports, LbMode.FAILOVER, (4, 2), 1)
    assert s.subject_alt_names == SVC.subject_alt_names and s.by_locality
    assert d.policy(wire(channel.encode_policy(POL))) == dataclasses.replace(POL, version="")


def test_encoding_a_decoded_record_gives_the_same_json() -> None:
    d = channel.Decoder()
    once = wire(channel.encode_workload(WL))
    assert wire(channel.encode_workload(d.workload(once))) == once
    once = wire(channel.encode_service(SVC))
    assert wire(channel.encode_service(d.service(once))) == once
    once = wire(channel.encode_policy(POL))
    assert wire(channel.encode_policy(d.policy(once))) == once


def test_decoder_shares_repeated_values() -> None:
    d = channel.Decoder()
    a, b = (d.workload(wire(channel.encode_workload(WL))) for _ in range(2))
    assert a.services is b.services and a.namespace is b.namespace


def test_decode_normalises_addresses_and_reads_missing_keys_as_empty() -> None:
    w = channel.Decoder().workload({"uid": "u", "name": "n", "ns": "ns",
                                    "ips": ["FD00:0:0::1"], "id": "spiffe://td/ns/ns/sa/x",
                                    "hbone": False})
    assert w.addresses == ("fd00::1",) and w.node == "" and w.healthy
    assert w.services == () and w.authorization_policies == () and w.cluster == "Kubernetes"


@pytest.mark.parametrize("ident", ["td/ns/ns/sa/x", "spiffe://td/ns/other/sa/x",
                                   "spiffe:///ns/ns/sa/x", "spiffe://td/ns/ns/sa/"])
def test_an_identity_that_does_not_fit_the_workload_is_refused(ident: str) -> None:
    with pytest.raises(ValueError, match="identity"):
        channel.Decoder().workload({"uid": "u", "name": "n", "ns": "ns", "ips": [],
                                    "id": ident, "hbone": True})


def test_a_service_key_must_be_its_namespace_and_hostname() -> None:
    d = wire(channel.encode_service(SVC))
    d["key"] = "ns/other"
    with pytest.raises(ValueError, match="sent as"):
        channel.Decoder().service(d)
