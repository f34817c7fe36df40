"""core/mesh/traffic.py: the records hold Istio's invariants and defaults."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from core.mesh import traffic as t


def test_defaults_are_istios() -> None:
    pool = t.ConnectionPool()
    assert pool.max_connections == 2**32 - 1 and pool.connect_timeout == 10.0
    od = t.OutlierDetection()
    assert (od.consecutive_5xx_errors, od.consecutive_gateway_errors) == (5, 0)
    assert (od.interval, od.base_ejection_time, od.max_ejection_percent,
            od.min_health_percent) == (10.0, 30.0, 10, 0)
    assert od.max_ejection_time == 300.0
    assert t.OutlierDetection(base_ejection_time=400).max_ejection_time == 400
    assert t.LoadBalancer().simple == t.SimpleLb.UNSPECIFIED
    assert t.ConsistentHash().minimum_ring_size == 1024
    assert t.EgressPolicy("ns").mode == t.OutboundMode.ALLOW_ANY


def test_enum_numbers_are_the_protos() -> None:
    assert [m.value for m in t.SimpleLb] == [0, 1, 2, 3, 4, 5]
    assert (int(t.SimpleLb.LEAST_REQUEST), int(t.SimpleLb.ROUND_ROBIN)) == (5, 4)
    assert (t.OutboundMode.REGISTRY_ONLY, t.OutboundMode.ALLOW_ANY) == (0, 1)


def dest(w: int, subset: str = "") -> t.RouteDestination:
    return t.RouteDestination("default/a.default.svc.cluster.local", subset, weight=w)


def test_weights_follow_istio_validation() -> None:
    t.L4Route(t.RouteKind.TCP, (dest(0),))              # a lone destination: weight ignored
    t.L4Route(t.RouteKind.TCP, (dest(30), dest(30)))    # relative: any total
    with pytest.raises(ValueError, match="total destination weight = 0"):
        t.L4Route(t.RouteKind.TCP, (dest(0, "a"), dest(0, "b")))
    with pytest.raises(ValueError, match="weight -1 < 0"):
        dest(-1)
    with pytest.raises(ValueError, match="at least one destination"):
        t.L4Route(t.RouteKind.TCP, ())


def test_sni_hosts_belong_to_tls_routes_only() -> None:
    sni = t.L4Match(sni_hosts=("a.example.com",))
    t.L4Route(t.RouteKind.TLS, (dest(0),), (sni,))
    with pytest.raises(ValueError, match="TLS route needs"):
        t.L4Route(t.RouteKind.TLS, (dest(0),))
    with pytest.raises(ValueError, match="TLS route needs"):
        t.L4Route(t.RouteKind.TLS, (dest(0),), (sni, t.L4Match(port=443)))
    with pytest.raises(ValueError, match="belong to TLS"):
        t.L4Route(t.RouteKind.TCP, (dest(0),), (sni,))


@pytest.mark.parametrize("kw", [
    {"max_ejection_percent": 101}, {"min_health_percent": -1}, {"interval": 0.0},
    {"base_ejection_time": 0.0005}, {"consecutive_5xx_errors": -1},
])
def test_outlier_detection_rejects_out_of_range(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        t.OutlierDetection(**kw)  # type: ignore[arg-type]


def test_pool_and_ring_bounds() -> None:
    with pytest.raises(ValueError, match="max_connections 0"):
        t.ConnectionPool(max_connections=0)
    with pytest.raises(ValueError, match="1ms"):
        t.ConnectionPool(connect_timeout=0.0)
    with pytest.raises(ValueError):
        t.ConsistentHash(minimum_ring_size=0)
    with pytest.raises(ValueError, match="needs a name"):
        t.Subset("")


def test_labels_have_one_spelling() -> None:
    a = t.labels({"version": "v1", "app": "x"})
    b = t.labels({"app": "x", "version": "v1"})
    assert a == b == (("app", "x"), ("version", "v1"))
    assert hash(t.Subset("v1", a)) == hash(t.Subset("v1", b))


def test_egress_host_parse() -> None:
    assert t.EgressHost.parse("*/*.example.com") == t.EgressHost("*", "*.example.com")
    assert str(t.EgressHost.parse("./foo.svc")) == "./foo.svc"
    for bad in ("foo.example.com", "/x", "ns/"):
        with pytest.raises(ValueError, match="namespace/dnsName"):
            t.EgressHost.parse(bad)


def test_records_are_frozen_and_slotted() -> None:
    records: list[Any] = [
        t.ConnectionPool(), t.OutlierDetection(), t.LoadBalancer(), t.ConsistentHash(),
        t.TrafficPolicy(), t.PortTrafficPolicy(80), t.Subset("v1"), t.L4Match(), dest(1),
        t.L4Route(t.RouteKind.TCP, (dest(1),)), t.ServiceTraffic("a/b"),
        t.EgressHost("*", "*"), t.EgressListener(()), t.EgressPolicy("ns")]
    for r in records:
        assert not hasattr(r, "__dict__"), type(r).__name__
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(r, dataclasses.fields(r)[0].name, None)


def test_lookups() -> None:
    tp = t.TrafficPolicy(port_level=(t.PortTrafficPolicy(80), t.PortTrafficPolicy(443)))
    assert tp.for_port(443) is tp.port_level[1] and tp.for_port(8080) is None
    st = t.ServiceTraffic("a/b", subsets=(t.Subset("v1"), t.Subset("v2")))
    assert st.subset("v2") is st.subsets[1] and st.subset("v3") is None
    assert t.EgressPolicy("ns", "sc").key == "ns/sc"
    assert t.EgressPolicy("ns").key == "mesh default"
