"""Auto-allocated VIPs of ServiceEntry hosts without addresses (controlplane/ambient/
autoallocate.py), as the converted services carry them.

Which hosts get a pair is istiod's rule (pilot/pkg/networking/serviceentry
ip_autoallocation.go ShouldV2AutoAllocateIP, pilot/pkg/controllers/ipallocate keepHost; facts,
not code). Where the pair lands is ours: a function of the served entries, identical in two
control planes that see the objects in any order, and the same after every change as a
control plane started from scratch on the result."""

from __future__ import annotations

import ipaddress
import random
from typing import Any

import pytest

from controlplane.ambient import Index, autoallocate
from controlplane.kube.objects import SERVICE_ENTRY
from core.mesh.model import Service, Vip
from tests.controlplane.ambient.kube import put, service, service_entry, store_of

V4 = ipaddress.ip_network("240.240.0.0/16")
V6 = ipaddress.ip_network("2001:2::/48")
PORTS = [{"number": 443, "name": "tls", "protocol": "TLS"}]


def entry(name: str, *hosts: str, ns: str = "ns", created: str | None = None,
          **spec: Any) -> dict[str, Any]:
    spec.setdefault("resolution", "DNS")
    return service_entry(name, ns, hosts=list(hosts), created=created, ports=PORTS, **spec)


def vips(index: Index, key: str) -> tuple[str, ...]:
    return tuple(v.address for v in index.services[key].vips)


def offset(addr: str) -> int:
    ip = ipaddress.ip_address(addr)
    net = V4 if ip.version == 4 else V6
    return int(ip) - int(net.network_address)


def pair_ok(pair: tuple[str, ...]) -> int:
    """The offset of a well-formed pair: one v4 in 240.240.0.0/16 and one v6 in 2001:2::/48
    at the same offset, neither the range's first address nor the /16's broadcast."""
    v4, v6 = pair
    assert ipaddress.ip_address(v4) in V4 and ipaddress.ip_address(v6) in V6, pair
    assert offset(v4) == offset(v6), pair
    assert 1 <= offset(v4) <= 65534, pair
    return offset(v4)


# ---- which hosts get one -----------------------------------------------------------------

def test_which_hosts_get_a_pair() -> None:
    index = Index(store_of(
        entry("dns", "api.external.test"),
        entry("static", "static.external.test", resolution="STATIC",
              endpoints=[{"address": "198.18.0.1"}]),
        entry("rr", "rr.external.test", resolution="DNS_ROUND_ROBIN"),
        entry("none", "none.external.test", resolution="NONE"),
        entry("given", "given.external.test", addresses=["198.19.0.9"]),
        entry("wild", "*.wild.test", "named.wild.test"),
        entry("dyn", "*.dyn.test", resolution="DYNAMIC_DNS"),
        service_entry("optout", "ns", hosts=["optout.test"], resolution="DNS", ports=PORTS,
                      labels={"networking.istio.io/enable-autoallocate-ip": "False"}),
    ), watch=False)
    for host in ("api.external.test", "static.external.test", "rr.external.test",
                 "named.wild.test", "*.dyn.test"):
        pair_ok(vips(index, f"ns/{host}"))
    # NONE passes connections through to the address the app dialled: a VIP leads nowhere.
    assert vips(index, "ns/none.external.test") == ()
    assert vips(index, "ns/given.external.test") == ("198.19.0.9",)  # the user's, only
    assert vips(index, "ns/*.wild.test") == ()   # a wildcard, unless DYNAMIC_DNS
    assert vips(index, "ns/optout.test") == ()


def test_the_network_of_the_vips_is_the_local_one() -> None:
    from tests.controlplane.ambient.kube import namespace

    index = Index(store_of(namespace("istio-system", {"topology.istio.io/network": "nw1"}),
                           entry("dns", "api.external.test")), watch=False)
    assert {v.network for v in index.services["ns/api.external.test"].vips} == {"nw1"}


def test_addresses_istiod_wrote_in_status_are_kept() -> None:
    """With istiod in the same cluster its allocator writes status.addresses; the control
    plane serves those (so sidecars, ztunnels and meshnode agree) and hands them to no one
    else."""
    se = entry("dns", "a.test", "b.test")
    se["status"] = {"addresses": [{"host": "a.test", "value": "240.240.0.1"},
                                  {"host": "a.test", "value": "2001:2::1"},
                                  {"host": "b.test", "value": "not-an-ip"}]}
    index = Index(store_of(se), watch=False)
    assert vips(index, "ns/a.test") == ("240.240.0.1", "2001:2::1")
    assert pair_ok(vips(index, "ns/b.test")) != 1  # unreadable: allocated here, elsewhere


def test_one_pair_per_namespace_of_a_host() -> None:
    index = Index(store_of(entry("x", "api.external.test", ns="a"),
                           entry("x", "api.external.test", ns="b")), watch=False)
    a, b = vips(index, "a/api.external.test"), vips(index, "b/api.external.test")
    assert pair_ok(a) != pair_ok(b)


def test_no_addresses_and_no_endpoints_still_a_service() -> None:
    """A DNS entry with neither addresses nor endpoints: the host itself is the endpoint
    (resolved at connect time), and the VIP is what the app dials."""
    index = Index(store_of(entry("dns", "api.external.test")), watch=False)
    svc = index.services["ns/api.external.test"]
    pair_ok(tuple(v.address for v in svc.vips))
    assert [w.hostname for w in index.workloads.values()] == ["api.external.test"]


# ---- where ---------------------------------------------------------------------------------

def many(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        created = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T00:00:00Z"
        out.append(entry(f"e{i}", f"h{i}.example.com", f"w{i}.example.org",
                         ns=f"ns{i % 7}", created=created))
    return out


def test_thousands_of_hosts_get_distinct_pairs() -> None:
    index = Index(store_of(*many(1500)), watch=False)
    offsets = [pair_ok(tuple(v.address for v in s.vips)) for s in index.services.values()]
    assert len(offsets) == 3000
    assert len(set(offsets)) == 3000
    # Some keys collided at their preferred offset (3000 keys in 65,534: certain) and were
    # moved on, yet none shares one.
    displaced = [k for k, s in index.services.items()
                 if offset(s.vips[0].address) != autoallocate.preferred(k)]
    assert displaced


def test_two_control_planes_on_the_objects_in_any_order_agree() -> None:
    objs = many(400)
    first = Index(store_of(*objs), watch=False).services
    shuffled = objs[:]
    random.Random(3).shuffle(shuffled)
    second = Index(store_of(*shuffled), watch=False).services
    assert first == second
    # And one fed by events, one object at a time, in yet another order.
    store = store_of()
    index = Index(store)
    random.Random(4).shuffle(shuffled)
    put(store, *shuffled)
    assert index.services == first


def colliding(n: int) -> list[str]:
    """`n` hosts whose keys (ns/<host>) prefer the same offset."""
    by_offset: dict[int, list[str]] = {}
    i = 0
    while True:
        host = f"c{i}.collide.test"
        hosts = by_offset.setdefault(autoallocate.preferred(f"ns/{host}"), [])
        hosts.append(host)
        if len(hosts) == n:
            return hosts
        i += 1


def test_a_collision_keeps_the_older_entry_and_undoes_itself() -> None:
    h1, h2, h3 = colliding(3)
    want = autoallocate.preferred(f"ns/{h1}")
    store = store_of(entry("newer", h2, created="2024-02-01T00:00:00Z"),
                     entry("older", h1, created="2024-01-01T00:00:00Z"))
    index = Index(store)
    at = {h: pair_ok(vips(index, f"ns/{h}")) for h in (h1, h2)}
    assert at[h1] == want and at[h2] != want
    # A third, newest, moves no one.
    put(store, entry("newest", h3, created="2024-03-01T00:00:00Z"))
    index.take()
    assert {h: pair_ok(vips(index, f"ns/{h}")) for h in (h1, h2)} == at
    assert pair_ok(vips(index, f"ns/{h3}")) not in (at[h1], at[h2])
    # The older one goes: the next in line takes the offset its key prefers, and is pushed
    # to the agents as a changed service.
    store.delete(SERVICE_ENTRY, "ns", "older")
    d = index.take()
    assert pair_ok(vips(index, f"ns/{h2}")) == want
    assert f"ns/{h2}" in d.services and f"ns/{h1}" in d.removed_services
    assert index.services == Index(store, watch=False).services


def test_an_address_someone_holds_is_never_handed_out() -> None:
    """An entry's own address, or a Service's clusterIP, inside the ranges blocks that
    offset for everyone (Istio's allocator counts spec addresses as used too)."""
    host = "api.external.test"
    alone = Index(store_of(entry("dns", host)), watch=False)
    v4, v6 = vips(alone, f"ns/{host}")
    store = store_of(entry("dns", host))
    index = Index(store)
    put(store, entry("pinned", "pinned.test", addresses=[v4]))
    index.take()
    moved = vips(index, f"ns/{host}")
    assert moved != (v4, v6) and pair_ok(moved) == offset(v4) % 65534 + 1
    store.delete(SERVICE_ENTRY, "ns", "pinned")
    put(store, service("kube", cluster_ip=v6))
    index.take()
    assert vips(index, f"ns/{host}") == moved
    assert index.services == Index(store, watch=False).services


def test_every_change_gives_what_a_fresh_control_plane_gives(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The incremental placement (only the keys after a change are placed again) against a
    full one, after each of 300 random changes, in a pool of 12 offsets: collisions,
    blocked offsets, exhaustion and ties in creation time all happen."""
    monkeypatch.setattr(autoallocate, "SIZE", 12)
    rng = random.Random(11)
    store = store_of()
    index = Index(store)
    live: dict[str, dict[str, Any]] = {}
    for step in range(300):
        name = f"e{rng.randint(0, 15)}"
        roll = rng.random()
        if name in live and roll < 0.35:
            store.delete(SERVICE_ENTRY, "ns", name)
            del live[name]
        else:
            spec: dict[str, Any] = {}
            if roll > 0.85:  # a user address inside the pool
                spec["addresses"] = [f"240.240.0.{rng.randint(1, 12)}"]
            elif roll > 0.8:
                spec["resolution"] = "NONE"
            day = rng.randint(1, 4)
            obj = entry(name, f"{name}.test", f"{name}.alt.test",
                        created=f"2024-01-0{day}T00:00:00Z", **spec)
            put(store, obj)
            live[name] = obj
        fresh = Index(store, watch=False).services
        assert index.services == fresh, f"step {step}"
    placed = [s for s in index.services.values()
              if s.vips and not live[s.name]["spec"].get("addresses")]
    assert placed and len({s.vips[0].address for s in placed}) == len(placed)


def test_exhausted_pool_leaves_the_rest_without_and_says_so(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(autoallocate, "SIZE", 4)
    index = Index(store_of(*(entry(f"e{i}", f"h{i}.test", created=f"2024-01-0{i + 1}T00:00:00Z")
                             for i in range(6))), watch=False)
    got = {k: vips(index, k) for k in sorted(index.services)}
    assert [bool(v) for v in got.values()] == [True] * 4 + [False] * 2  # oldest first
    assert "autoallocate_exhausted" in capsys.readouterr().out


def test_the_allocator_alone() -> None:
    """The allocator's own contract: a staged claim is served with its VIPs; a service that
    wants none is served as it is; a withdrawn key is removed."""
    a = autoallocate.Allocator()
    svc = Service(name="x", namespace="ns", hostname="x.test")
    plain = Service(name="k", namespace="ns", hostname="k.test", vips=(Vip("", "10.0.0.1"),))
    from datetime import datetime
    a.stage("ns/x.test", autoallocate.Claim(svc, (datetime.min, "ns", "x", "x.test")))
    a.stage("ns/k.test", autoallocate.Claim(plain, None))
    out = dict(a.commit("nw"))
    assert out["ns/k.test"] == plain
    x = out["ns/x.test"]
    assert x is not None and pair_ok(tuple(v.address for v in x.vips)) == \
        autoallocate.preferred("ns/x.test")
    assert {v.network for v in x.vips} == {"nw"}
    assert len(a) == 1
    a.stage("ns/x.test", None)
    assert a.commit("nw") == [("ns/x.test", None)]
    assert len(a) == 0
