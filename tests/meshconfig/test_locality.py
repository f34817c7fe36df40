"""Locality-aware endpoint picking (Istio's Service.load_balancing, as ztunnel does it): the
channel's encoding of locality, cluster and routing preference, and the proxy table's pick for
a given source workload. Pure logic: records -> channel JSON -> MeshTable, no sockets."""

from __future__ import annotations

from collections import Counter

import pytest

from core.mesh import channel
from core.mesh.model import NO_LOCALITY, LbMode, Port, Service, Vip, Workload, WorkloadStatus
from proxy.meshconfig.table import MeshTable, NoEndpoint

SVC = "default/echo.default.svc.cluster.local"
VIP = ("198.19.0.10", 80)
REGION, ZONE, SUBZONE, NODE, CLUSTER, NETWORK = range(1, 7)


def wl(name: str, ip: str, *, node: str = "n1", loc: tuple[str, str, str] = NO_LOCALITY,
       cluster: str = "", network: str = "", healthy: bool = True,
       backs: bool = True) -> Workload:
    return Workload(uid=f"uid-{name}", name=name, namespace="default", addresses=(ip,),
                    node=node, service_account=name, tunnel_protocol=1, network=network,
                    cluster_id=cluster, locality=loc,
                    services=((SVC, (Port(80, 8080),)),) if backs else (),
                    status=WorkloadStatus.HEALTHY if healthy else WorkloadStatus.UNHEALTHY)


def svc(mode: int = LbMode.UNSPECIFIED_MODE, prefs: tuple[int, ...] = (),
        health: int = 0) -> Service:
    return Service(name="echo", namespace="default", hostname="echo.default.svc.cluster.local",
                   vips=(Vip("", VIP[0]),), ports=(Port(80, 8080),), lb_mode=mode,
                   lb_routing_preference=prefs, lb_health_policy=health)


def table(service: Service, *workloads: Workload) -> MeshTable:
    t = MeshTable()
    t.apply({"t": "snapshot", "services": [channel.encode_service(service)],
             "workloads": [channel.encode_workload(w) for w in workloads]})
    return t


def me(t: MeshTable, name: str = "client") -> Workload:
    return t.workloads[f"uid-{name}"]


def picks(t: MeshTable, src: Workload | None, n: int) -> list[str]:
    return [t.route(VIP, src).addr[0] for _ in range(n)]


# Three endpoints around a client in us-east/a/s1 on node n1:
#   same node and subzone; same zone, other subzone and node; other region.
CLIENT = wl("client", "198.18.0.1", node="n1", loc=("us-east", "a", "s1"), backs=False)
E_NODE = wl("e-node", "198.18.1.1", node="n1", loc=("us-east", "a", "s1"))
E_ZONE = wl("e-zone", "198.18.1.2", node="n2", loc=("us-east", "a", "s2"))
E_FAR = wl("e-far", "198.18.1.3", node="n9", loc=("eu-west", "b", "s1"))


def test_no_preference_is_round_robin_over_all_usable() -> None:
    t = table(svc(), CLIENT, E_NODE, E_ZONE, E_FAR, wl("sick", "198.18.1.4", healthy=False))
    assert picks(t, me(t), 6) == ["198.18.1.1", "198.18.1.2", "198.18.1.3"] * 2
    assert picks(t, None, 3) == ["198.18.1.1", "198.18.1.2", "198.18.1.3"]


def test_preference_without_strict_or_failover_is_ignored() -> None:
    # ztunnel: modes UNSPECIFIED ("standard") and PASSTHROUGH do not rank endpoints.
    t = table(svc(LbMode.UNSPECIFIED_MODE, (NODE,)), CLIENT, E_NODE, E_ZONE, E_FAR)
    assert sorted(picks(t, me(t), 3)) == ["198.18.1.1", "198.18.1.2", "198.18.1.3"]
    t = table(svc(LbMode.PASSTHROUGH, (NODE,)), CLIENT, E_NODE, E_ZONE, E_FAR)
    assert t.route(VIP, me(t)).addr == VIP


def test_strict_keeps_only_endpoints_matching_every_scope() -> None:
    t = table(svc(LbMode.STRICT, (NODE,)), CLIENT, E_NODE, E_ZONE, E_FAR)
    assert set(picks(t, me(t), 4)) == {"198.18.1.1"}
    assert t.route(VIP, me(t)).addr == ("198.18.1.1", 8080)  # target port from the workload
    t = table(svc(LbMode.STRICT, (REGION, ZONE)), CLIENT, E_NODE, E_ZONE, E_FAR)
    assert sorted(set(picks(t, me(t), 4))) == ["198.18.1.1", "198.18.1.2"]


def test_strict_with_no_match_is_no_endpoint() -> None:
    t = table(svc(LbMode.STRICT, (NODE,)), CLIENT, E_ZONE, E_FAR)
    with pytest.raises(NoEndpoint, match="matches the source on node"):
        t.route(VIP, me(t))
    # An unknown source cannot prove a match either: strict fails closed.
    with pytest.raises(NoEndpoint, match="unknown source"):
        t.route(VIP, None)
    # No usable endpoint at all keeps today's message.
    t = table(svc(LbMode.STRICT, (NODE,)), CLIENT, wl("sick", "198.18.1.4", healthy=False))
    with pytest.raises(NoEndpoint, match="no healthy endpoint"):
        t.route(VIP, me(t))


def test_failover_picks_the_best_rank_round_robin() -> None:
    prefs = (REGION, ZONE, SUBZONE)
    t = table(svc(LbMode.FAILOVER, prefs), CLIENT, E_NODE, E_ZONE, E_FAR,
              wl("e-node2", "198.18.1.5", node="n3", loc=("us-east", "a", "s1")))
    # Rank 3 (same subzone): e-node and e-node2, alternating.
    assert picks(t, me(t), 4) == ["198.18.1.1", "198.18.1.5"] * 2
    # Those two gone: rank 2 (same zone) wins over rank 0 (other region).
    t.apply({"t": "delta", "removed_workloads": ["uid-e-node", "uid-e-node2"]})
    assert set(picks(t, me(t), 3)) == {"198.18.1.2"}
    # Only the far one left: failover still serves it (strict would not).
    t.apply({"t": "delta", "removed_workloads": ["uid-e-zone"]})
    assert picks(t, me(t), 2) == ["198.18.1.3"] * 2
    # An unhealthy endpoint never counts, even with the best rank.
    t.apply({"t": "delta", "workloads": [channel.encode_workload(
        wl("e-sick", "198.18.1.6", node="n1", loc=("us-east", "a", "s1"), healthy=False))]})
    assert picks(t, me(t), 2) == ["198.18.1.3"] * 2


def test_failover_rank_stops_at_the_first_mismatch() -> None:
    # [region, zone]: an endpoint in another region but the same zone name ranks 0, not 1,
    # so it does not beat the one in the same region and another zone (rank 1).
    same_zone_name = wl("e-x", "198.18.1.7", node="n4", loc=("eu-west", "a", "s1"))
    same_region = wl("e-y", "198.18.1.8", node="n5", loc=("us-east", "c", "s9"))
    t = table(svc(LbMode.FAILOVER, (REGION, ZONE)), CLIENT, same_zone_name, same_region)
    assert set(picks(t, me(t), 4)) == {"198.18.1.8"}
    # Subzone compares the subzone alone (as ztunnel): [subzone] ranks e-x (s1) first.
    t = table(svc(LbMode.FAILOVER, (SUBZONE,)), CLIENT, same_zone_name, same_region)
    assert set(picks(t, me(t), 4)) == {"198.18.1.7"}


def test_failover_on_cluster_and_network() -> None:
    client = wl("client", "198.18.0.1", cluster="c1", network="net1", backs=False)
    other_cluster = wl("e-c2", "198.18.1.1", cluster="c2", network="net1")
    other_net = wl("e-n2", "198.18.1.2", cluster="c1", network="net2")
    t = table(svc(LbMode.FAILOVER, (CLUSTER,)), client, other_cluster, other_net)
    assert set(picks(t, me(t), 3)) == {"198.18.1.2"}
    t = table(svc(LbMode.FAILOVER, (NETWORK,)), client, other_cluster, other_net)
    assert set(picks(t, me(t), 3)) == {"198.18.1.1"}
    # An empty cluster_id is ztunnel's "Kubernetes": it matches an explicit "Kubernetes".
    client = wl("client", "198.18.0.1", cluster="Kubernetes", backs=False)
    t = table(svc(LbMode.STRICT, (CLUSTER,)), client, wl("e-k", "198.18.1.3", cluster=""),
              other_cluster)
    assert set(picks(t, me(t), 3)) == {"198.18.1.3"}


def test_failover_without_a_source_uses_every_endpoint() -> None:
    t = table(svc(LbMode.FAILOVER, (NODE,)), E_NODE, E_ZONE)
    assert Counter(picks(t, None, 4)) == {"198.18.1.1": 2, "198.18.1.2": 2}


def test_an_update_to_the_source_changes_the_pick() -> None:
    t = table(svc(LbMode.STRICT, (NODE,)), CLIENT, E_NODE, E_ZONE)
    assert set(picks(t, me(t), 2)) == {"198.18.1.1"}
    moved = wl("client", "198.18.0.1", node="n2", backs=False)
    t.apply({"t": "delta", "workloads": [channel.encode_workload(moved)]})
    assert set(picks(t, me(t), 2)) == {"198.18.1.2"}


def test_unknown_scope_matches_nothing() -> None:
    t = table(svc(LbMode.STRICT, (99,)), CLIENT, E_NODE)
    with pytest.raises(NoEndpoint):
        t.route(VIP, me(t))


def test_encode_sends_locality_cluster_and_preference_only_when_set() -> None:
    full = channel.encode_workload(wl("a", "198.18.0.1", loc=("r", "z", "s"), cluster="c1",
                              network="net1"))
    assert (full["loc"], full["cl"], full["net"]) == (["r", "z", "s"], "c1", "net1")
    bare = channel.encode_workload(wl("b", "198.18.0.2", cluster="Kubernetes"))
    assert not {"loc", "cl", "net"} & bare.keys()
    assert "loc" not in channel.encode_workload(wl("c", "198.18.0.3", loc=("", "", "")))
    assert channel.encode_service(svc(LbMode.FAILOVER, (NETWORK, REGION)))["rp"] == [
        NETWORK, REGION]
    assert "rp" not in channel.encode_service(svc())
    # And the proxy reads back what was sent.
    t = MeshTable()
    t.apply({"t": "snapshot", "services": [channel.encode_service(svc(LbMode.STRICT, (ZONE,)))],
             "workloads": [full, bare]})
    a, b = t.workloads["uid-a"], t.workloads["uid-b"]
    assert (a.locality, a.cluster, a.network) == (("r", "z", "s"), "c1", "net1")
    assert (b.locality, b.cluster, b.network) == (("", "", ""), "Kubernetes", "")
    assert t.services[SVC].lb_routing_preference == (ZONE,) and t.services[SVC].by_locality
