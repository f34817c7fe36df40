"""The composed pick reproduces MeshTable's locality behaviour exactly: on random meshes
(modes, preferences, localities, health, sources) the round-robin sequence of
proxy/traffic's Cluster equals MeshTable.route's, and strict refuses where it refuses. So the
new picker can replace the table's without changing who goes where."""

from __future__ import annotations

import random

import pytest

from core.mesh import channel
from core.mesh.model import LbMode, Port, Service, Vip, Workload, WorkloadStatus
from proxy.meshconfig.table import MeshTable, NoEndpoint
from proxy.traffic.active import ActiveConnections
from proxy.traffic.cluster import Cluster, ClusterKey
from proxy.traffic.locality import preferred
from proxy.traffic.policy import NO_RULES
from proxy.traffic.refusal import Reason, Refused
from tests.traffic.fakes import FakeClock

SVC_KEY = "default/echo.default.svc.cluster.local"
VIP = ("198.19.0.10", 80)
REGIONS, ZONES, SUBZONES, NODES = ("r1", "r2"), ("z1", "z2"), ("s1", "s2"), ("n1", "n2", "n3")


def random_mesh(rng: random.Random) -> tuple[Service, list[Workload], Workload]:
    mode = rng.choice([LbMode.UNSPECIFIED_MODE, LbMode.STRICT, LbMode.FAILOVER,
                       LbMode.FAILOVER])
    prefs = tuple(rng.sample(range(1, 7), rng.randint(0, 4)))
    svc = Service(name="echo", namespace="default", hostname="echo.default.svc.cluster.local",
                  vips=(Vip("", VIP[0]),), ports=(Port(80, 8080),), lb_mode=mode,
                  lb_routing_preference=prefs)

    def wl(name: str, ip: str, backs: bool) -> Workload:
        return Workload(uid=f"uid-{name}", name=name, namespace="default", addresses=(ip,),
                        node=rng.choice(NODES), network=rng.choice(("", "net2")),
                        cluster_id=rng.choice(("", "c2")),
                        locality=(rng.choice(REGIONS), rng.choice(ZONES), rng.choice(SUBZONES)),
                        services=((SVC_KEY, (Port(80, 8080),)),) if backs else (),
                        status=WorkloadStatus.HEALTHY if rng.random() > 0.2
                        else WorkloadStatus.UNHEALTHY)

    eps = [wl(f"e{i}", f"198.18.1.{i + 1}", True) for i in range(rng.randint(0, 7))]
    return svc, eps, wl("client", "198.18.0.1", False)


@pytest.mark.parametrize("seed", range(300))
def test_same_picks_as_the_mesh_table(seed: int) -> None:
    rng = random.Random(seed)
    svc, eps, client = random_mesh(rng)
    table = MeshTable()
    table.apply({"t": "snapshot", "services": [channel.encode_service(svc)],
                 "workloads": [channel.encode_workload(w) for w in [client, *eps]]})
    usable = tuple(w for w in eps if w.healthy)
    src = client if rng.random() > 0.1 else None
    cluster = Cluster(ClusterKey(SVC_KEY, 80), NO_RULES, FakeClock(), random.Random(0),
                      ActiveConnections())
    n = 2 * len(eps) + 1
    try:
        expected = [table.route(VIP, src).addr[0] for _ in range(n)]
    except NoEndpoint:
        with pytest.raises(Refused) as refused:
            cluster.pick(svc, usable, src)
        assert refused.value.reason == Reason.NO_HEALTHY_ENDPOINT
        return
    got = [cluster.pick(svc, usable, src).addresses[0] for _ in range(n)]
    assert got == expected


def test_preferred_ranks_in_order_and_stops_at_the_first_mismatch() -> None:
    # ztunnel's example: [network, region, zone], matching network and zone but not
    # region, ranks 1, below an endpoint matching network and region (2).
    net, region, zone = 6, 1, 2
    svc = Service(name="s", namespace="d", hostname="h", lb_mode=LbMode.FAILOVER,
                  lb_routing_preference=(net, region, zone))
    src = Workload("c", "c", "d", ("1.1.1.1",), locality=("r1", "z1", ""))
    a = Workload("a", "a", "d", ("1.1.1.2",), locality=("r2", "z1", ""))
    b = Workload("b", "b", "d", ("1.1.1.3",), locality=("r1", "z9", ""))
    assert preferred(svc, src, [a, b]) == (b,)
    strict = Service(name="s", namespace="d", hostname="h", lb_mode=LbMode.STRICT,
                     lb_routing_preference=(net, region, zone))
    assert preferred(strict, src, [a, b]) == ()
    assert preferred(strict, None, [a, b]) == ()
    assert preferred(svc, None, [a, b]) == (a, b)
