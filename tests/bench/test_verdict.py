"""The benchmarks' verdicts: ratios over rounds, met / NOT met, the busy-machine flag, and the
reports and plots drawn from rounds (synthetic results: the measurements themselves need
the lab and minutes; `make bench` runs them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import mesh_path, plots, proxy_path
from bench.verdict import Target, disturbed, machine_note


def test_target_is_the_median_of_its_rounds_with_a_verdict() -> None:
    t = Target("x", [0.9, 1.2, 1.05], 1.0)
    assert t.median == 1.05 and t.met
    assert t.row() == ["x", "≥ 1", "1.05", "0.90-1.20", "3", "met"]
    # One good round does not carry a target: the median does.
    assert not Target("x", [0.4, 1.6, 0.5], 1.0).met
    upper = Target("y", [1.4, 1.6, 1.7], 1.5, at_least=False)
    assert not upper.met and upper.row()[-1] == "NOT met" and upper.row()[1] == "≤ 1.5"


def test_rounds_far_from_the_calibration_flag_the_run() -> None:
    assert disturbed(50.0, [52.0, 48.0, 70.0]) == []
    assert disturbed(50.0, [52.0, 80.0, 30.0]) == [1, 2]
    assert "Busy machine: round(s) 2" in machine_note(50.0, [52.0, 90.0, 49.0])
    assert "Busy machine" not in machine_note(50.0, [52.0, 55.0, 49.0])


def _rounds(**metrics: list[float]) -> dict[str, Any]:
    import statistics
    return {**{m: statistics.median(v) for m, v in metrics.items()}, "rounds": metrics}


def _proxy_results() -> dict[str, Any]:
    def row(p50: float, conn: float, gbps: float, cpu: float) -> dict[str, Any]:
        return _rounds(p50_us=[p50, p50 + 2, p50 - 1], p99_us=[p50 * 2] * 3,
                       conn_s=[conn, conn * 1.1, conn * 0.9], gbps=[gbps] * 3,
                       cpu_us_per_conn=[cpu] * 3)

    rows = {"a_direct": row(20, 10000, 40, float("nan")), "d_haproxy": row(40, 7000, 30, 60),
            "b_one_hop": row(60, 3500, 25, 150), "c_two_hops": row(90, 2000, 15, 200),
            "c_two_hops_copy": row(95, 1900, 10, 210), "b_one_hop_ebpf": row(58, 3600, 25, 140),
            "c_two_hops_ebpf": row(88, 2100, 15, 190)}
    return {"seconds": 5, "rounds": 3, "calibration_us": 20.0,
            "direct_rtt_us": [20.0, 22.0, 19.0], "rows": rows}


def test_proxy_report_gives_each_target_its_verdict() -> None:
    text = proxy_path.report(_proxy_results())
    # meshnode's connection rate is half HAProxy's in every round: NOT met, and said so.
    assert "| connections/s through one hop, meshnode ÷ HAProxy | ≥ 1 | 0.50 |" in text
    assert "NOT met" in text
    assert "Busy machine" not in text
    assert "3500 (3150-3850)" in text  # conn/s: median (min-max) of the rounds


def test_mesh_report_normalises_the_tunnel_rate_by_each_labs_direct_rate() -> None:
    proxy = _proxy_results()
    d = _rounds(p50_us=[25, 25, 25], p90_us=[30] * 3, p99_us=[40] * 3,
                conn_s=[5000, 5000, 5000], gbps=[40, 40, 40])
    m = _rounds(p50_us=[200, 210, 190], p90_us=[300] * 3, p99_us=[500] * 3,
                conn_s=[1000, 1000, 1000], gbps=[16, 16, 16])
    m["proxy_cpu_us"] = [100.0, 90.0]  # per node proxy
    res = {"path": {"seconds": 5, "rounds": 3, "calibration_us": 25.0,
                    "direct_rtt_us": [25.0, 25.0, 25.0],
                    "rows": {"direct": d, "mesh_hbone": m}},
           "snapshot": {}}
    text = mesh_path.report(res, proxy)
    # Mesh: 1000/5000 = 0.2 of its direct; one hop: 3500/10000 = 0.35 of its direct (round
    # 1; the rounds scale together) -> 0.2 / 0.35 = 0.57: met.
    assert "÷ one hop plaintext | ≥ 0.5 | 0.57 |" in text
    assert "single-stream throughput through the mesh path ÷ direct | ≥ 0.35 | 0.40 |" in text
    assert text.count("| met |") == 2


def test_plots_draw_the_rounds_spread(tmp_path: Path) -> None:
    proxy = _proxy_results()
    written = plots.render({"proxy": proxy}, tmp_path)
    assert [p.name for p in written] == ["proxy-path.png"]
    assert written[0].stat().st_size > 10_000
    err = plots._spread(proxy["rows"], ["b_one_hop"], "conn_s")
    assert err is not None
    assert [round(x) for x in (err[0][0], err[1][0])] == [350, 350]
