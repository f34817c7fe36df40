"""The traffic-management benchmark's report and configuration (bench/traffic_path.py), on
synthetic results: the measurement itself needs the lab and a minute; `make bench` runs it."""

from __future__ import annotations

import statistics
from dataclasses import replace
from typing import Any

from bench import traffic_path
from proxy.traffic.routes import Connection, select_route


def _row(conn: list[float], p50: list[float]) -> dict[str, Any]:
    rounds = {"conn_s": conn, "p50_us": p50, "p99_us": [x * 3 for x in p50],
              "cpu_us_per_conn": [300.0, 310.0, 290.0]}
    return {**{m: statistics.median(v) for m, v in rounds.items()}, "rounds": rounds}


def _results(rules_conn: list[float], rules_p50: list[float]) -> dict[str, Any]:
    return {"seconds": 5, "rounds": 3, "samples": 1500, "calibration_us": 100.0,
            "direct_rtt_us": [100.0, 104.0, 98.0],
            "rows": {"none": _row([2000, 2200, 1800], [400, 420, 380]),
                     "rules": _row(rules_conn, rules_p50)},
            "config": {"routes": 10, "subsets": 3, "endpoints": 6}}


def test_within_five_percent_is_met_per_round_ratio_medians() -> None:
    # conn/s ratios per round: 0.97, 0.96, 0.99; latency ratios 1.02, 1.00, 1.05.
    text = traffic_path.report(_results([1940, 2112, 1782], [408, 420, 399]))
    assert "| connections/s, traffic rules ÷ no rules | ≥ 0.95 | 0.97 | 0.96-0.99 | 3 | met |" \
        in text
    assert ("| connect latency (p50, to the first byte), traffic rules ÷ no rules | ≤ 1.05 | "
            "1.02 | 1.00-1.05 | 3 | met |") in text
    assert "| 10 routes, 3 subsets, DestinationRule | 1940 (1782-2112) | 408 (399-420) |" in text
    assert "| +8 |" in text  # added p50: 408 - 400 µs
    assert "Busy machine" not in text


def test_a_slower_rules_path_is_not_met() -> None:
    # 0.90 of the rate in the median round, and 10% more latency: both NOT met.
    text = traffic_path.report(_results([1800, 2000, 1600], [440, 462, 418]))
    assert "| connections/s, traffic rules ÷ no rules | ≥ 0.95 | 0.90 |" in text
    assert text.count("NOT met") == 2


def test_the_benchmark_config_is_10_routes_3_subsets_and_the_client_walks_them_all() -> None:
    rules = traffic_path.rules()
    assert len(rules.routes) == 10 and {s.name for s in rules.subsets} == {"v1", "v2", "v3"}
    client = traffic_path.CLIENT
    client_labels = dict(next(w.labels for w in traffic_path.workload_labels()
                              if w.uid == client.uid))
    conn = Connection(traffic_path.VIP, 80, client.addresses[0], client, client_labels)
    route = select_route(rules.routes, conn)
    assert route is not None and route is rules.routes[-1]
    assert [(d.subset, d.weight) for d in route.destinations] == [("v1", 50), ("v2", 30),
                                                                   ("v3", 20)]
    # Each of the 9 before it takes a client that differs in its port, labels or namespace
    # (so none is dead weight that a cheap check could skip).
    for r in rules.routes[:-1]:
        m = r.matches[0]
        other = Connection(traffic_path.VIP, m.port or 80, client.addresses[0],
                           replace(client, namespace=m.source_namespace or client.namespace),
                           dict(m.source_labels) or client_labels)
        assert select_route(rules.routes, other) is r, r.name
