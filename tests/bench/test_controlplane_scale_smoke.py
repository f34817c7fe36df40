"""bench/controlplane_scale.py at a tiny scale: the whole benchmark runs (fake API server,
the control plane in its own process, real ADS streams, churn) and its report has every row.
The figures themselves are the benchmark's business (`make bench`), not this test's."""

from __future__ import annotations

from bench import controlplane_scale


def test_the_benchmark_runs_and_reports_every_row() -> None:
    r = controlplane_scale.measure(pods=200, namespaces=4, streams=10, churn=50, seconds=1.0,
                                   rounds=3, small_pods=100, channels=2)
    big, small = r["clusters"]["big"], r["clusters"]["small"]
    assert (big["pods"], small["pods"], big["streams"]) == (200, 100, 10)
    for c in (big, small):
        assert c["counts"][0] == c["pods"]  # every pod served as a workload
        assert len(c["rounds"]) == 3 and not c["stream_errors"]
        for x in c["rounds"]:
            # Every stream got every event: 50 events in 1 s, 10 streams.
            assert x["events"] == 50 and x["delivered"] == x["expected"] == 500
            assert x["sessions"] == 10 and x["bytes"] > 0 and x["cp_cpu_s"] > 0
    text = controlplane_scale.report(r)
    for row in ("event-to-push latency p50", "event-to-push latency p99",
                "control-plane CPU per event", "control-plane memory per workload",
                "bytes pushed per event, all streams", "bytes per event, 200 ÷ 100 pods"):
        line = next((ln for ln in text.splitlines() if ln.startswith(f"| {row}")), None)
        assert line is not None, f"no row {row!r} in:\n{text}"
    for row in ("latency p99", "memory per workload", "bytes per event, 200"):
        line = next(ln for ln in text.splitlines() if row in ln and ln.startswith("|"))
        assert line.rstrip(" |").endswith(("| met", "| NOT met")), line
