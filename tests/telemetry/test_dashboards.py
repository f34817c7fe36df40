"""The Grafana dashboards (deploy/dashboards/*.json) and the alerts
(deploy/monitoring/prometheusrule.yaml) name only metrics the code registers, and their
PromQL is valid (promtool, from Debian's prometheus package: scripts/setup.sh).

The code's metrics are read from the source as tests/unit/test_docs_reference.py reads them
(every prometheus_client Counter/Gauge/Histogram with a literal name), so a renamed or
removed metric fails here until the dashboards and alerts follow.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_docs_reference import all_metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy" / "dashboards").glob("*.json"))
RULES = ROOT / "deploy" / "monitoring" / "prometheusrule.yaml"

# Grafana's variables, replaced by values PromQL accepts, for promtool.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "30s"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan"}


def registered() -> set[str]:
    """Every series name the code's metrics expose."""
    names: set[str] = set()
    for m in all_metrics():
        names.add(m.name)
        if m.name.endswith("_total"):
            names.add(m.name.removesuffix("_total") + "_created")
        names.update(m.name + s for s in ("_bucket", "_sum", "_count"))  # histograms
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels, keywords)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # strings (label values)
    s = re.sub(r"\{[^}]*\}", " ", s)                        # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)                       # ranges
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\$\w+", " ", s)                            # Grafana variables
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        rest = s[m.end():].lstrip()
        if rest.startswith("(") or m.group(0).lower() in KEYWORDS:
            continue  # a function or aggregation, or a keyword
        if m.start() > 0 and (s[m.start() - 1].isdigit() or s[m.start() - 1] == "."):
            continue  # part of a number (1e3)
        names.add(m.group(0))
    return names


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for p in panels:
        out.append(p)
        out.extend(_panels(p.get("panels", [])))
    return out


def dashboard_queries(path: Path) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable."""
    d = json.loads(path.read_text())
    out = [(f"{path.name}: {p['title']}", t["expr"]) for p in _panels(d["panels"])
           for t in p.get("targets", [])]
    for v in d["templating"]["list"]:
        if v["type"] != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", q)
        assert m, f"{path.name}: variable {v['name']}: {q}"
        out.append((f"{path.name}: variable {v['name']}", m.group(1)))
    return out


def rule_groups() -> dict[str, Any]:
    doc = yaml.safe_load(RULES.read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert doc["metadata"]["name"] and doc["metadata"]["namespace"] == "meshnode-system"
    assert set(doc["spec"]) == {"groups"}
    spec: dict[str, Any] = doc["spec"]
    return spec


def alerts() -> list[dict[str, Any]]:
    return [r for g in rule_groups()["groups"] for r in g["rules"]]


def promtool_check(tmp_path: Path, groups: dict[str, Any]) -> str:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: run `make setup` (Debian's prometheus package)"
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(groups))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_extractor_sees_names_and_skips_the_rest() -> None:
    expr = ('histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="y", z=~"$v"}[5m]))) '
            '/ on(pod) group_left(node) b - time() + count(c == 0) or vector(1e3) '
            '> bool 2 unless d offset 5m')
    assert metric_names(expr) == {"a_bucket", "b", "c", "d"}
    assert "meshnode_no_such_metric" not in registered()
    assert {"istio_tcp_sent_bytes_total", "meshnode_controlplane_push_latency_seconds_bucket",
            "meshnode_agent_xds_connected",
            "meshnode_proxy_certificate_expiry_timestamp_seconds"} <= registered()


def test_there_are_three_dashboards_with_panels() -> None:
    assert [p.name for p in DASHBOARDS] == [
        "meshnode-controlplane.json", "meshnode-mesh.json", "meshnode-node.json"]
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        assert d["uid"] == path.stem and d["title"].startswith("meshnode / ")
        assert d["templating"]["list"][0]["type"] == "datasource"
        panels = [p for p in _panels(d["panels"]) if p["type"] != "row"]
        assert len(panels) >= 8
        ids = [p["id"] for p in _panels(d["panels"])]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for p in panels:
            assert p["targets"] and p["datasource"]["uid"] == "${datasource}", p["title"]
            assert p["description"], p["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboards_name_only_registered_metrics(path: Path) -> None:
    known = registered()
    for where, expr in dashboard_queries(path):
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr}"
        assert names <= known, f"{where}: {sorted(names - known)} are not metrics of the code"


def test_alerts_name_only_registered_metrics() -> None:
    known = registered()
    for rule in alerts():
        names = metric_names(rule["expr"])
        assert names and names <= known, f"{rule['alert']}: {sorted(names - known)}"


def test_the_alerts_that_matter_are_there() -> None:
    by_name = {r["alert"]: r for r in alerts()}
    assert {"MeshnodePodsNotCaptured", "MeshnodeDriftRepairs",
            "MeshnodeAgentControlPlaneDisconnected", "MeshnodeControlPlaneNoClients",
            "MeshnodeCertificateExpiringSoon"} <= set(by_name)
    uses = {name: metric_names(r["expr"]) for name, r in by_name.items()}
    assert "meshnode_pods" in uses["MeshnodePodsNotCaptured"]
    assert "meshnode_drift_repairs_total" in uses["MeshnodeDriftRepairs"]
    assert "meshnode_agent_xds_connected" in uses["MeshnodeAgentControlPlaneDisconnected"]
    assert "meshnode_controlplane_ads_clients" in uses["MeshnodeControlPlaneNoClients"]
    assert "meshnode_proxy_certificate_expiry_timestamp_seconds" in \
        uses["MeshnodeCertificateExpiringSoon"]
    for r in by_name.values():
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]


def test_promtool_accepts_the_alerts(tmp_path: Path) -> None:
    out = promtool_check(tmp_path, rule_groups())
    assert f"SUCCESS: {len(alerts())} rules found" in out


def test_promtool_accepts_every_dashboard_query(tmp_path: Path) -> None:
    rules = []
    for path in DASHBOARDS:
        for i, (_where, expr) in enumerate(dashboard_queries(path)):
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            expr = re.sub(r"\$\w+", ".*", expr)  # the dashboards' own variables: "All"
            rules.append({"record": f"dashboard:{path.stem.replace('-', '_')}:{i}",
                          "expr": expr})
    out = promtool_check(tmp_path, {"groups": [{"name": "dashboards", "rules": rules}]})
    assert f"SUCCESS: {len(rules)} rules found" in out


def test_promtool_catches_a_bad_query(tmp_path: Path) -> None:
    with pytest.raises(AssertionError):
        promtool_check(tmp_path, {"groups": [{"name": "x", "rules": [
            {"record": "x:y", "expr": "sum(rate(meshnode_pods[5m]"}]}]})
