"""Every manifest, and the chart as Helm renders it, against the Kubernetes OpenAPI schemas
that kubernetes-validate ships (offline; strict: unknown fields are errors), and the chart's
PodMonitors against the Prometheus Operator's CRD (tests/deploy/crds.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from tests.deploy import crds
from tests.deploy.manifests import DEPLOY, REPO, plain, render

VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]

CHART_VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "ebpf": {"capture": {"backend": "ebpf", "fallback": "iptables"}},
    "no-controlplane": {"controlplane": {"enabled": False}},
    "external-controlplane": {"controlplane": {"enabled": False,
                                               "externalAddress": "cp.example:15012"}},
    "one-replica": {"controlplane": {"replicas": 1}},
    "node-token": {"controlplane": {"enabled": False, "externalAddress": "cp.example:15012",
                                    "agentCredential": "nodeToken"}},
    "namespace+pull-secrets": {"namespace": {"create": True},
                               "imagePullSecrets": [{"name": "regcred"}],
                               "nodeSelector": {"kubernetes.io/os": "linux"}},
    "podmonitor": {"metrics": {"podMonitor": {"enabled": True, "interval": "30s",
                                              "scrapeTimeout": "10s",
                                              "labels": {"release": "prometheus"}}}},
    "no-scrape-annotations+max-unavailable": {
        "metrics": {"scrapeAnnotations": False, "bindAddress": "::",
                    "ports": {"agent": 9101, "proxy": 9102, "controlplane": 9103}},
        "controlplane": {"replicas": 3, "podDisruptionBudget": {"minAvailable": None,
                                                               "maxUnavailable": "34%"}}},
    # every knob of the three workloads set
    "knobs": {
        "image": {"tag": "1.1"},
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "meshnode.io/skip", "operator": "DoesNotExist"}]}]}}},
        **{w: {"logLevel": "debug", "priorityClassName": "mesh-critical",
               "podAnnotations": {"example.com/team": "net"},
               "podLabels": {"team": "net"},
               "resources": {"requests": {"cpu": "50m", "memory": "64Mi"},
                             "limits": {"memory": "256Mi"}}}
           for w in ("agent", "proxy")},
        "controlplane": {"logLevel": "warning", "priorityClassName": "",
                         "podAnnotations": {"example.com/team": "net"},
                         "podLabels": {"team": "net"},
                         "nodeSelector": {"node-role.kubernetes.io/infra": ""},
                         "tolerations": [{"key": "dedicated", "operator": "Equal",
                                          "value": "infra", "effect": "NoSchedule"}],
                         "affinity": {"podAntiAffinity": {
                             "preferredDuringSchedulingIgnoredDuringExecution": [{
                                 "weight": 50, "podAffinityTerm": {
                                     "topologyKey": "topology.kubernetes.io/zone",
                                     "labelSelector": {"matchLabels": {
                                         "app.kubernetes.io/name": "meshnode-controlplane"}}}}
                             ]}}}},
}


def check(obj: dict[str, Any], version: str) -> None:
    if obj["kind"] in crds.CRDS:
        found = crds.problems(obj)
        assert not found, f"{obj['kind']}/{obj['metadata']['name']}: {found}"
        return
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']} on {version}: "
                             f"{exc.message} at {'/'.join(map(str, exc.path))}") from None


def test_the_latest_schema_is_newer_than_130() -> None:
    assert tuple(map(int, VERSIONS[1].split("."))) >= (1, 30)


@pytest.mark.parametrize("version", VERSIONS)
def test_plain_manifests_validate(version: str) -> None:
    objs = plain()
    assert len(objs) >= 10
    for _file, obj in objs:
        check(obj, version)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("variant", sorted(CHART_VARIANTS))
def test_rendered_chart_validates(variant: str, version: str) -> None:
    for obj in render(CHART_VARIANTS[variant]):
        check(obj, version)


def test_generated_secrets_validate(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(DEPLOY / "make_secrets.py"), "--dir",
                          str(tmp_path / "ca"), "--node", "node-a"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    docs = list(yaml.safe_load_all(out))
    assert len(docs) == 3
    for version in VERSIONS:
        for obj in docs:
            check(obj, version)


def test_the_validator_is_not_vacuous() -> None:
    """A typo'd field and a wrong type in the DaemonSet must fail, or the passes above mean
    nothing."""
    (ds,) = [o for _f, o in plain() if o["kind"] == "DaemonSet"
             and o["metadata"]["name"] == "meshnode-node"]
    typo = {**ds, "spec": {**ds["spec"], "updateStrategyy": {}}}
    with pytest.raises(AssertionError, match="updateStrategyy"):
        check(typo, VERSIONS[0])
    bad = yaml.safe_load(yaml.safe_dump(ds))
    bad["spec"]["template"]["spec"]["hostPID"] = "yes"
    with pytest.raises(AssertionError, match="hostPID"):
        check(bad, VERSIONS[-1])


def test_the_crd_validator_is_not_vacuous() -> None:
    (pm, *_) = [o for o in render(CHART_VARIANTS["podmonitor"]) if o["kind"] == "PodMonitor"]
    check(pm, VERSIONS[0])
    typo = yaml.safe_load(yaml.safe_dump(pm))
    typo["spec"]["podMetricsEndpoints"][0]["intervall"] = "30s"
    with pytest.raises(AssertionError, match="intervall"):
        check(typo, VERSIONS[0])
    bad = yaml.safe_load(yaml.safe_dump(pm))
    bad["spec"]["podMetricsEndpoints"][0]["interval"] = "30 seconds"
    with pytest.raises(AssertionError, match="30 seconds"):
        check(bad, VERSIONS[0])


def test_the_variants_render_what_they_say() -> None:
    """Each variant above is checked with the objects it is about."""
    kinds = {n: {o["kind"] for o in render(v)} for n, v in CHART_VARIANTS.items()}
    assert "PodMonitor" in kinds["podmonitor"] and "PodMonitor" not in kinds["defaults"]
    assert "PodDisruptionBudget" in kinds["no-scrape-annotations+max-unavailable"]
    assert "Namespace" in kinds["namespace+pull-secrets"]
