"""Traffic management in a real proxy process, for a real captured pod (tests/proxy/
traffic_harness.py): records go into the agent's XdsState, over mesh.sock to the proxy, and
the pod's connections to the service VIP show what the proxy did with them.

The records are built in code here; the control plane's conversion of Istio's YAML into them
is tested on its own side."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.mesh.model import Port, Service, Vip, Workload
from core.mesh.traffic import (
    ConnectionPool,
    EgressPolicy,
    L4Route,
    LoadBalancer,
    OutboundMode,
    OutlierDetection,
    RouteDestination,
    RouteKind,
    ServiceTraffic,
    SimpleLb,
    Subset,
    TrafficPolicy,
    WorkloadLabels,
    labels,
)
from core.netns import entered
from testing.mesh_procs import wait_for
from tests.dns.resolver import build_query
from tests.proxy.traffic_harness import (
    ECHO_VIP,
    ENDPOINT_IPS,
    EXTERNAL,
    Rig,
    echo_service,
    endpoint,
    rig,
)

SVC = echo_service()
PORTS = (8081, 8082, 8083)
E1, E2, E3 = (endpoint(f"e{i + 1}", ip, SVC, p)
              for i, (ip, p) in enumerate(zip(ENDPOINT_IPS, PORTS, strict=True)))
VERSIONS = {E1.uid: "v1", E2.uid: "v1", E3.uid: "v2"}
SUBSETS = (Subset("v1", labels({"version": "v1"})), Subset("v2", labels({"version": "v2"})))


def version_labels() -> list[WorkloadLabels]:
    return [WorkloadLabels(uid, labels({"app": "echo", "version": v}))
            for uid, v in VERSIONS.items()]


def canary(v1: int, v2: int, gen: str) -> ServiceTraffic:
    return ServiceTraffic(SVC.key, (L4Route(RouteKind.TCP, (
        RouteDestination(SVC.key, "v1", weight=v1), RouteDestination(SVC.key, "v2", weight=v2)),
        name=f"default/echo/tcp/0/{gen}"),), SUBSETS,
        TrafficPolicy(LoadBalancer(SimpleLb.ROUND_ROBIN)), "default/echo", "default/echo")


@pytest.fixture
def r(tmp_path: Path) -> Iterator[Rig]:
    with rig(tmp_path) as g:
        for w, port in zip((E1, E2, E3), PORTS, strict=True):
            g.serve(w.name, w.addresses[0], port)
        yield g


def applied(r: Rig, route: str) -> bool:
    """Whether the proxy holds the route named `route` for the echo service."""
    return any(rt["name"] == route for t in r.view("traffic") if t["service"] == SVC.key
               for rt in t["routes"])


def test_canary_90_10_then_50_50_for_new_connections_only(r: Rig) -> None:
    r.feed.apply(SVC, E1, E2, E3, *version_labels(), canary(90, 10, "a"))
    wait_for(lambda: applied(r, "default/echo/tcp/0/a"), 10, "the 90/10 rules")
    got = Counter(r.ask() for _ in range(2000))
    assert set(got) <= {"e1", "e2", "e3"}, got  # no failed connection among them
    v2 = got["e3"] / 2000
    assert abs(v2 - 0.10) <= 0.03, got
    assert r.metric("meshnode_proxy_traffic_connections_total", subset="v2",
                    route="default/echo/tcp/0/a") == got["e3"]
    # An established connection, to v1, carrying data while the weights change.
    held = r.connect(ECHO_VIP, 80)
    first = held.recv(100)
    while b"\n" not in first:
        first += held.recv(100)
    t0 = time.monotonic()
    r.feed.apply(canary(50, 50, "b"))
    wait_for(lambda: applied(r, "default/echo/tcp/0/b"), 1, "the 50/50 rules within 1 s")
    assert time.monotonic() - t0 < 1.0
    got = Counter(r.ask() for _ in range(600))
    assert set(got) <= {"e1", "e2", "e3"}, got
    assert abs(got["e3"] / 600 - 0.5) <= 0.07, got
    with held:  # untouched: same endpoint, still relaying both ways
        held.sendall(b"still there")
        echoed = b""
        while len(echoed) < len(b"still there"):
            echoed += held.recv(100)
        assert echoed == b"still there"
    assert first.decode().strip() in ("e1", "e2", "e3")


def test_max_connections_refuses_the_next_one_and_counts_it(r: Rig) -> None:
    n = 3
    rules = ServiceTraffic(SVC.key, traffic_policy=TrafficPolicy(
        connection_pool=ConnectionPool(max_connections=n)), destination_rule="default/echo")
    r.feed.apply(SVC, E1, E2, E3, rules)
    wait_for(lambda: any(t["service"] == SVC.key for t in r.view("traffic")), 10, "rules")
    held = []
    for _ in range(n):
        s = r.connect(ECHO_VIP, 80)
        assert s.recv(100)  # connected through to an endpoint
        held.append(s)
    before = r.metric("meshnode_proxy_traffic_refused_total", reason="overflow")
    assert r.ask() == ""  # the N+1-th: reset by the proxy
    assert r.metric("meshnode_proxy_traffic_refused_total", reason="overflow") == before + 1
    cluster = next(c for t in r.view("traffic") if t["service"] == SVC.key
                   for c in t["clusters"])
    assert (cluster["open"], cluster["max_connections"], cluster["overflows"]) == (n, n, 1)
    log = [e for e in r.proxy.access_log() if e.get("refused") == "overflow"]
    assert len(log) == 1 and log[0]["cluster"] == cluster["name"], log
    held.pop().close()
    wait_for(lambda: r.ask() in ("e1", "e2", "e3"), 5, "a slot back")
    for s in held:
        s.close()


def test_a_killed_endpoint_is_ejected_retried_around_and_back_after_its_time(r: Rig) -> None:
    base = 3.0
    rules = ServiceTraffic(SVC.key, traffic_policy=TrafficPolicy(
        LoadBalancer(SimpleLb.ROUND_ROBIN),
        outlier_detection=OutlierDetection(consecutive_5xx_errors=0,
                                           consecutive_gateway_errors=1, interval=1.0,
                                           base_ejection_time=base,
                                           max_ejection_percent=100)))
    r.feed.apply(SVC, E1, E2, E3, rules)
    wait_for(lambda: any(t["service"] == SVC.key for t in r.view("traffic")), 10, "rules")
    assert Counter(r.ask() for _ in range(30)) == {"e1": 10, "e2": 10, "e3": 10}
    victim = next(s for s in r.servers if s.name == "e2")
    victim.stop()
    killed = time.monotonic()
    answers = [r.ask() for _ in range(60)]
    # Retries: the client never sees the dead endpoint, not even before the ejection.
    assert "" not in answers and "e2" not in answers, Counter(answers)
    ejected = next(c["ejected"] for t in r.view("traffic") if t["service"] == SVC.key
                   for c in t["clusters"])
    assert ejected == [E2.uid]
    assert r.metric("meshnode_proxy_traffic_connect_retries_total") >= 1
    wait_for(lambda: r.metric("meshnode_proxy_traffic_ejected_endpoints") == 1, 2,
             "the ejection gauge")
    assert r.metric("meshnode_proxy_traffic_ejections_total") == 1
    victim.start()
    # Back after baseEjectionTime (at the first sweep after it: within one interval more).
    wait_for(lambda: "e2" in {r.ask() for _ in range(3)}, base + 3, "e2 back")
    assert time.monotonic() - killed >= base
    assert Counter(r.ask() for _ in range(30)) == {"e1": 10, "e2": 10, "e3": 10}


def slow_share(r: Rig, lb: SimpleLb, gen: str, n: int = 90) -> float:
    """Connections opened at a steady pace, each held until its server answers: e1 answers
    after 1 s, the others at once. The share of them that went to e1."""
    rules = ServiceTraffic(SVC.key, (L4Route(RouteKind.TCP, (RouteDestination(SVC.key),),
                                             name=gen),),
                           traffic_policy=TrafficPolicy(LoadBalancer(lb)))
    r.feed.apply(rules)
    wait_for(lambda: applied(r, gen), 10, f"rules {gen}")
    got: list[str] = []
    threads = []
    for _ in range(n):
        t = threading.Thread(target=lambda: got.append(r.ask(timeout=10)))
        t.start()
        threads.append(t)
        time.sleep(0.03)
    for t in threads:
        t.join()
    c = Counter(got)
    assert set(c) <= {"e1", "e2", "e3"} and len(got) == n, c
    return c["e1"] / n


def test_least_request_sends_less_to_a_slow_endpoint_than_round_robin(r: Rig) -> None:
    slow = next(s for s in r.servers if s.name == "e1")
    slow.stop()
    r.servers.remove(slow)
    r.serve("e1", E1.addresses[0], PORTS[0], delay=1.0)
    r.feed.apply(SVC, E1, E2, E3)
    rr = slow_share(r, SimpleLb.ROUND_ROBIN, "rr")
    lr = slow_share(r, SimpleLb.LEAST_REQUEST, "lr")
    assert abs(rr - 1 / 3) < 0.05, rr
    assert lr < rr * 0.6, (lr, rr)


EXT = Service(name="api", namespace="default", hostname="api.example.com",
              vips=(Vip("", "198.19.61.20"),), ports=(Port(9000, 9000),))
# The control plane's uid for a ServiceEntry's inline endpoint.
EXT_EP = Workload(uid=f"Kubernetes/networking.istio.io/ServiceEntry/default/api/{EXTERNAL}",
                  name="api", namespace="default", addresses=(EXTERNAL,),
                  services=((EXT.key, (Port(9000, 9000),)),))


def dns_a(r: Rig, name: str) -> str:
    """An A query from pod a to a resolver address (captured: the proxy's 15053 answers)."""
    with entered(r.a.path):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        s.settimeout(3)
        s.sendto(build_query(name, 0x4242), ("198.18.61.2", 53))
        msg, _ = s.recvfrom(4096)
    qid, flags, _qd, an = struct.unpack_from("!HHHH", msg)
    assert qid == 0x4242 and flags & 0x8000 and an == 1, msg
    return socket.inet_ntoa(msg[-4:])


def test_service_entry_host_resolves_through_the_proxy_and_registry_only_refuses_others(
        r: Rig) -> None:
    r.serve("external", EXTERNAL, 9000)
    r.serve("other", EXTERNAL, 9001)
    r.feed.apply(SVC, E1, E2, E3, EXT, EXT_EP)
    wait_for(lambda: any(s["key"] == EXT.key for s in r.view("services")), 10, "the entry")
    assert r.ask(EXTERNAL, 9001) == "other"  # ALLOW_ANY (no Sidecar): passthrough
    r.feed.apply(EgressPolicy("", mode=OutboundMode.REGISTRY_ONLY))
    wait_for(lambda: r.view("egress") != [], 10, "the mesh default Sidecar")
    ip = dns_a(r, "api.example.com")
    assert ip == "198.19.61.20"
    assert r.ask(ip, 9000) == "external"
    before = r.metric("meshnode_proxy_traffic_refused_total", reason="registry_only")
    # Not in the registry: refused, although 9000 of the same host is (the entry's endpoint
    # opens the entry's ports, not the host).
    assert r.ask(EXTERNAL, 9001) == ""
    assert r.metric("meshnode_proxy_traffic_refused_total",
                    reason="registry_only") == before + 1
    assert r.ask(ECHO_VIP, 80) in ("e1", "e2", "e3")  # a mesh service still is reached
    refused = [e for e in r.proxy.access_log() if e.get("refused") == "registry_only"]
    assert len(refused) == 1 and refused[0]["dst"] == f"{EXTERNAL}:9001", refused


def test_a_dns_service_entry_endpoint_is_resolved_at_connect_time(r: Rig) -> None:
    """A DNS ServiceEntry's endpoint is a host name (here a numeric one, so the node's
    resolver needs no configuration): the router resolves it per connection."""
    r.serve("external", EXTERNAL, 9000)
    by_name = Workload(uid="uid-api", name="api", namespace="default", addresses=(),
                       hostname=EXTERNAL, services=((EXT.key, (Port(9000, 9000),)),))
    r.feed.apply(EXT, by_name)
    wait_for(lambda: any(s["key"] == EXT.key for s in r.view("services")), 10, "the entry")
    assert r.ask("198.19.61.20", 9000) == "external"


def test_tls_routes_by_sni_and_a_silent_client_is_not_held(r: Rig) -> None:
    """A `tls` route by SNI sends v2.example.com to subset v2; the `tcp` route takes the rest.
    A client that sends no ClientHello (a server-first protocol) waits at most the peek's
    bound, then is routed as without SNI; plain text is routed at once."""
    from core.mesh.traffic import L4Match
    from tests.traffic.test_sni import hello

    rules = ServiceTraffic(SVC.key, (
        L4Route(RouteKind.TLS, (RouteDestination(SVC.key, "v2"),),
                (L4Match(sni_hosts=("v2.example.com",)),), "default/echo/tls/0"),
        L4Route(RouteKind.TCP, (RouteDestination(SVC.key, "v1"),), name="default/echo/tcp/0")),
        SUBSETS, TrafficPolicy(LoadBalancer(SimpleLb.ROUND_ROBIN)))
    r.feed.apply(SVC, E1, E2, E3, *version_labels(), rules)
    wait_for(lambda: applied(r, "default/echo/tcp/0"), 10, "the rules")

    def first_line(payload: bytes | None) -> tuple[str, float]:
        t0 = time.monotonic()
        s = r.connect(ECHO_VIP, 80)
        with s:
            if payload is not None:
                s.sendall(payload)
            data = b""
            while b"\n" not in data:  # the name, maybe followed by the echo of the payload
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        return data.split(b"\n")[0].decode(), time.monotonic() - t0

    assert {first_line(hello("v2.example.com"))[0] for _ in range(4)} == {"e3"}
    assert {first_line(hello("other.example.com"))[0] for _ in range(4)} <= {"e1", "e2"}
    name, took = first_line(b"PING\r\n")
    assert name in ("e1", "e2") and took < 0.5
    name, took = first_line(None)  # silent: routed after the bounded wait
    assert name in ("e1", "e2") and 0.9 <= took < 3, took
