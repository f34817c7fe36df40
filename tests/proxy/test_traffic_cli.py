"""`meshnode proxy-config traffic|egress -o table|json|yaml` against a real proxy process
holding traffic rules (tests/proxy/traffic_harness.py): canary weights over two subsets,
a DestinationRule with a pool and outlier detection that has ejected a dead endpoint, and a
REGISTRY_ONLY mesh-default Sidecar. The command is the real `meshnode`, run as a user runs
it (tests/cli/clirun.py: no traceback may reach the user)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import yaml

from core.mesh.traffic import (
    ConnectionPool,
    EgressHost,
    EgressListener,
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
from testing.mesh_procs import wait_for
from tests.cli.clirun import meshnode, meshnode_json
from tests.proxy.traffic_harness import ENDPOINT_IPS, Rig, echo_service, endpoint, rig

SVC = echo_service()
PORTS = (8081, 8082, 8083)
E1, E2, E3 = (endpoint(f"e{i + 1}", ip, SVC, p)
              for i, (ip, p) in enumerate(zip(ENDPOINT_IPS, PORTS, strict=True)))
ROUTE = "default/echo/tcp/0"
RULES = ServiceTraffic(
    SVC.key,
    (L4Route(RouteKind.TCP, (RouteDestination(SVC.key, "v1", weight=90),
                             RouteDestination(SVC.key, "v2", weight=10)), name=ROUTE),),
    (Subset("v1", labels({"version": "v1"})), Subset("v2", labels({"version": "v2"}))),
    TrafficPolicy(LoadBalancer(SimpleLb.ROUND_ROBIN), ConnectionPool(max_connections=50),
                  OutlierDetection(consecutive_gateway_errors=1, consecutive_5xx_errors=0,
                                   interval=1.0, base_ejection_time=300.0,
                                   max_ejection_percent=100)),
    "default/echo", "default/echo")
SIDECAR = EgressPolicy("istio-system", "default", OutboundMode.REGISTRY_ONLY,
                       (EgressListener((EgressHost("default", "*"),)),))


@pytest.fixture(scope="module")
def r(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with rig(tmp_path_factory.mktemp("tcli")) as g:
        g.serve("e1", E1.addresses[0], PORTS[0])
        g.serve("e3", E3.addresses[0], PORTS[2])  # e2 (v1) is down: ejected at first try
        g.feed.apply(SVC, E1, E2, E3, RULES, SIDECAR,
                     *(WorkloadLabels(w.uid, labels({"version": v}))
                       for w, v in ((E1, "v1"), (E2, "v1"), (E3, "v2"))))
        wait_for(lambda: any(t["service"] == SVC.key for t in g.view("traffic")), 10,
                 "the rules")
        wait_for(lambda: g.view("egress") != [], 10, "the Sidecar")
        answers = [g.ask() for _ in range(40)]
        assert set(answers) <= {"e1", "e3"} and "" not in answers, answers
        yield g


def flags(r: Rig) -> list[str]:
    return ["--proxy-admin", f"127.0.0.1:{r.proxy.port}"]


def test_traffic_as_json_yaml_and_table(r: Rig) -> None:
    [t] = meshnode_json("proxy-config", "traffic", *flags(r))
    assert (t["service"], t["virtual_service"], t["destination_rule"]) == (
        SVC.key, "default/echo", "default/echo")
    [route] = t["routes"]
    assert route["name"] == ROUTE
    assert [(d["subset"], d["weight"], d["percent"]) for d in route["destinations"]] == [
        ("v1", 90, 90), ("v2", 10, 10)]
    assert {s["name"]: s["endpoints"] for s in t["subsets"]} == {"v1": 2, "v2": 1}
    clusters = {c["subset"]: c for c in t["clusters"]}
    v1 = clusters["v1"]
    assert (v1["lb"], v1["max_connections"], v1["open"]) == ("ROUND_ROBIN", 50, 0)
    assert v1["ejected"] == [E2.uid]  # the dead endpoint, by its connect failure
    assert v1["outlier_detection"][E2.uid]["ejected"] is True
    assert clusters["v2"]["ejected"] == []

    as_yaml = yaml.safe_load(meshnode("proxy-config", "traffic", *flags(r), "-o",
                                      "yaml").stdout)
    assert as_yaml == meshnode_json("proxy-config", "traffic", *flags(r))

    out = meshnode("proxy-config", "traffic", *flags(r))  # table, the default
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["SERVICE", "ROUTE/CLUSTER", "DESTINATION", "WEIGHT/STATE"]
    row = next(ln for ln in lines if "subset v1" in ln)
    assert ROUTE in row and "90%" in row
    assert any("subset v2" in ln and "10%" in ln for ln in lines), out.stdout
    cluster = next(ln for ln in lines if f"outbound|80|v1|{SVC.key}" in ln)
    assert "lb ROUND_ROBIN, open 0/50" in cluster and f"ejected 1: {E2.uid}" in cluster

    assert meshnode_json("proxy-config", "traffic", *flags(r), "-n", "other") == []


def test_egress_as_json_yaml_and_table(r: Rig) -> None:
    [e] = meshnode_json("pc", "egress", *flags(r))
    assert (e["namespace"], e["name"], e["mode"]) == ("istio-system", "default",
                                                      "REGISTRY_ONLY")
    assert e["listeners"] == [{"port": 0, "hosts": ["default/*"]}]
    as_yaml = yaml.safe_load(meshnode("pc", "egress", *flags(r), "-o", "yaml").stdout)
    assert as_yaml == [e]
    out = meshnode("pc", "egress", *flags(r), "-o", "table")
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()[:2]
    assert header.split()[:3] == ["NAMESPACE", "SIDECAR", "OUTBOUND"]
    assert row.split()[:3] == ["istio-system", "default", "REGISTRY_ONLY"]
    assert "*: default/*" in row


def test_bad_flags_and_a_proxy_that_is_not_there_are_one_line_errors(r: Rig) -> None:
    bad = meshnode("proxy-config", "traffic", *flags(r), "-o", "xml")
    assert bad.returncode == 2 and "xml" in bad.stderr, bad.stderr
    gone = meshnode("proxy-config", "traffic", "--proxy-admin", "127.0.0.1:1")
    assert gone.returncode != 0 and gone.stdout == ""
    assert "127.0.0.1:1" in gone.stderr and len(gone.stderr.strip().splitlines()) <= 2, \
        gone.stderr
    assert json.loads(meshnode("pc", "traffic", *flags(r), "-o", "json").stdout)
