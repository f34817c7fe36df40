"""The state store: indexes stay exact through updates and removals, and updates are O(1)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from agent.xds.state import Change, XdsState
from core.mesh.model import Policy, Port, Service, Vip, Workload


def wl(uid: str, *ips: str, node: str = "n1", svc: str = "", version: str = "1",
       network: str = "", status: int = 0) -> Workload:
    services = ((svc, (Port(80, 8080),)),) if svc else ()
    return Workload(uid=uid, name=uid, namespace="default", addresses=tuple(ips), node=node,
                    services=services, version=version, network=network, status=status)


def svc(host: str, *vips: str, ns: str = "default") -> Service:
    return Service(name=host, namespace=ns, hostname=host, vips=tuple(Vip("", v) for v in vips),
                   ports=(Port(80, 8080),))


def test_workload_indexes_follow_updates_and_removals() -> None:
    st = XdsState(local_node="n1")
    st.apply([wl("a", "10.0.0.1", svc="default/s"), wl("b", "10.0.0.2", node="n2",
                                                        svc="default/s")])
    assert st.workload_by_ip("10.0.0.1").uid == "a"  # type: ignore[union-attr]
    assert {w.uid for w in st.endpoints("default/s")} == {"a", "b"}
    assert set(st.local) == {"a"}
    # a moves IP, service and node
    st.apply([wl("a", "10.0.0.9", node="n2", svc="default/t")])
    assert st.workload_by_ip("10.0.0.1") is None
    assert st.workload_by_ip("10.0.0.9").uid == "a"  # type: ignore[union-attr]
    assert [w.uid for w in st.endpoints("default/s")] == ["b"]
    assert [w.uid for w in st.endpoints("default/t")] == ["a"]
    assert st.local == {}
    st.apply(removed_addresses=["a", "b", "never-there"])
    assert st.workloads == {} and st.endpoints("default/s") == []
    assert st.workload_by_ip("10.0.0.9") is None and st.workload_by_ip("10.0.0.2") is None


def test_shared_ip_keeps_every_owner_and_prefers_healthy() -> None:
    st = XdsState()
    st.apply([wl("h1", "192.168.1.1", status=1), wl("h2", "192.168.1.1"),
              wl("h3", "192.168.1.1")])
    assert {w.uid for w in st.workloads_by_ip("192.168.1.1")} == {"h1", "h2", "h3"}
    assert st.workload_by_ip("192.168.1.1").uid == "h2"  # type: ignore[union-attr]
    st.apply(removed_addresses=["h2", "h3"])
    assert [w.uid for w in st.workloads_by_ip("192.168.1.1")] == ["h1"]
    st.apply(removed_addresses=["h1"])
    assert st.workloads_by_ip("192.168.1.1") == []


def test_networks_are_separate_address_spaces() -> None:
    st = XdsState()
    st.apply([wl("a", "10.0.0.1", network="net1"), wl("b", "10.0.0.1", network="net2")])
    assert st.workload_by_ip("10.0.0.1", "net1").uid == "a"  # type: ignore[union-attr]
    assert st.workload_by_ip("10.0.0.1", "net2").uid == "b"  # type: ignore[union-attr]
    assert st.workload_by_ip("10.0.0.1") is None


def test_services_by_vip_hostname_and_cidr() -> None:
    st = XdsState()
    st.apply([svc("a.svc", "10.96.0.1", "fd00::1"),
              Service(name="c", namespace="ns", hostname="c.svc",
                      vips=(Vip("", "10.200.0.0", 16),))])
    assert st.service_by_vip("10.96.0.1").key == "default/a.svc"  # type: ignore[union-attr]
    assert st.service_by_vip("fd00::1").hostname == "a.svc"  # type: ignore[union-attr]
    assert st.service_by_hostname("default", "a.svc") is st.service("default/a.svc")
    assert st.service_by_vip("10.200.3.4").key == "ns/c.svc"  # type: ignore[union-attr]
    assert st.service_by_vip("10.201.0.1") is None
    st.apply([svc("a.svc", "10.96.0.2")])
    assert st.service_by_vip("10.96.0.1") is None and st.service_by_vip("fd00::1") is None
    st.apply(removed_addresses=["default/a.svc", "ns/c.svc"])
    assert st.services == {} and st.service_by_vip("10.200.3.4") is None


def test_a_name_that_changes_kind_leaves_no_stale_index() -> None:
    st = XdsState()
    st.apply([wl("default/x.svc", "10.0.0.5")])
    st.apply([svc("x.svc", "10.96.0.5")])
    assert st.workloads == {} and st.workload_by_ip("10.0.0.5") is None
    assert st.service("default/x.svc") is not None


def test_changes_are_batched_per_apply_and_version_only_updates_are_silent() -> None:
    st = XdsState()
    got: list[Sequence[Change]] = []
    unsub = st.subscribe(got.append)
    st.apply([wl("a", "10.0.0.1"), wl("b", "10.0.0.2")])
    assert len(got) == 1 and [(c.key, c.old) for c in got[0]] == [("a", None), ("b", None)]
    st.apply([wl("a", "10.0.0.1", version="2")])          # same content, new version
    assert len(got) == 1 and st.workload("a").version == "2"  # type: ignore[union-attr]
    assert st.versions("address") == {"a": "2", "b": "1"}
    st.apply([wl("a", "10.0.0.3", version="3")], removed_addresses=["b"])
    assert [(c.key, c.new is None) for c in got[1]] == [("a", False), ("b", True)]
    unsub()
    st.apply(removed_addresses=["a"])
    assert len(got) == 2


def test_a_failing_subscriber_does_not_stop_the_others() -> None:
    st = XdsState()
    seen: list[int] = []

    def boom(_: Sequence[Change]) -> None:
        raise RuntimeError("consumer bug")
    st.subscribe(boom)
    st.subscribe(lambda cs: seen.append(len(cs)))
    st.apply([wl("a", "10.0.0.1")])
    assert seen == [1] and st.workload("a") is not None


def test_policies_by_name() -> None:
    st = XdsState()
    p = Policy(name="deny", namespace="ns", scope=1, action=1, version="v1")
    st.apply([p])
    assert st.policy("ns/deny") is p and st.versions("policy") == {"ns/deny": "v1"}
    st.apply(removed_policies=["ns/deny"])
    assert st.policies == {}


def test_updating_one_workload_does_not_rebuild() -> None:
    """O(1): touching one workload in a 100k state costs the same as in a 100-entry state."""
    def per_update(n: int) -> float:
        st = XdsState(local_node="n1")
        st.apply([wl(f"w{i}", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                     svc=f"default/s{i % 10}") for i in range(n)])
        t = time.perf_counter()
        for k in range(200):
            st.apply([wl("w7", f"10.255.0.{k % 250}", svc=f"default/s{k % 3}",
                         version=str(k))])
        return (time.perf_counter() - t) / 200
    small, big = per_update(100), per_update(100_000)
    # A rebuild of 100k would be ~1000x the small case; allow noise, not linear growth.
    assert big < small * 5 + 0.0002, (small, big)
