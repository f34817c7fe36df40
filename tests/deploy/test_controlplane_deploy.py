"""The control plane as deployed (plain manifests and the chart): two replicas on distinct
nodes with a PodDisruptionBudget, the in-cluster API-server source with its service-account
token, the CA root from the Secret; and the agents' credential, a projected token with
audience istio-ca that the control plane's trusted node account names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import config as agent_config
from cli.main import build_parser
from controlplane.auth import parse_account
from controlplane.kube.tokenreview import AUDIENCE
from tests.deploy.manifests import config_file, container, find, plain, render

Obj = dict[str, Any]
SELECTOR = {"app.kubernetes.io/name": "meshnode-controlplane"}


@pytest.fixture(params=["plain", "helm"])
def objs(request: pytest.FixtureRequest) -> list[Obj]:
    return [o for _f, o in plain()] if request.param == "plain" else render()


def deployment(objs: list[Obj]) -> Obj:
    return find(objs, "Deployment", "meshnode-controlplane")


def cp_args(objs: list[Obj]) -> Any:
    c = container(deployment(objs)["spec"]["template"]["spec"], "controlplane")
    return build_parser().parse_args(c["args"])


def test_two_replicas_on_distinct_nodes_one_at_a_time(objs: list[Obj]) -> None:
    spec = deployment(objs)["spec"]
    assert spec["replicas"] == 2
    assert spec["selector"]["matchLabels"] == SELECTOR
    # hostNetwork and port 15012: no surge, one replica down at a time.
    assert spec["strategy"] == {"type": "RollingUpdate",
                                "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}
    (term,) = spec["template"]["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]
    assert term == {"topologyKey": "kubernetes.io/hostname",
                    "labelSelector": {"matchLabels": SELECTOR}}


def test_a_disruption_budget_keeps_one_replica(objs: list[Obj]) -> None:
    pdb = find(objs, "PodDisruptionBudget", "meshnode-controlplane")
    dep = deployment(objs)
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["metadata"]["namespace"] == dep["metadata"]["namespace"]
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": SELECTOR}}
    assert SELECTOR.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert pdb["spec"]["minAvailable"] < dep["spec"]["replicas"]  # a drain can proceed


def test_in_cluster_source_with_its_token(objs: list[Obj]) -> None:
    args = cp_args(objs)
    assert (args.config, args.kubeconfig) == (None, None)  # in-cluster
    dep = deployment(objs)
    pod = dep["spec"]["template"]["spec"]
    sa = find(objs, "ServiceAccount", pod["serviceAccountName"])
    assert pod["automountServiceAccountToken"] is True
    assert sa.get("automountServiceAccountToken", True) is True
    assert not [o for o in objs if o["kind"] == "ConfigMap"
                and o["metadata"]["name"] == "meshnode-mesh"]


def test_the_ca_root_comes_from_the_secret(objs: list[Obj]) -> None:
    args = cp_args(objs)
    pod = deployment(objs)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container(pod, "controlplane")["volumeMounts"]}
    for path in (args.root_cert, args.root_key, args.token_key):
        m = mounts[str(Path(path).parent)]
        assert m["readOnly"] is True
        assert volumes[m["name"]]["secret"]["secretName"] == "meshnode-controlplane-ca"


def test_the_agents_account_is_the_trusted_node_account(objs: list[Obj]) -> None:
    ds = find(objs, "DaemonSet", "meshnode-node")
    agent = (ds["metadata"]["namespace"], ds["spec"]["template"]["spec"]["serviceAccountName"])
    trusted = [parse_account(a) for a in cp_args(objs).trusted_node_account]
    assert trusted == [agent]


def test_the_agent_presents_a_projected_istio_ca_token(objs: list[Obj],
                                                       tmp_path: Path) -> None:
    spec = find(objs, "DaemonSet", "meshnode-node")["spec"]["template"]["spec"]
    (vol,) = [v for v in spec["volumes"] if "projected" in v]
    (src,) = vol["projected"]["sources"]
    token = src["serviceAccountToken"]
    assert token["audience"] == AUDIENCE
    assert 3600 <= token["expirationSeconds"] <= 86400
    (mount,) = [m for m in container(spec, "agent")["volumeMounts"] if m["name"] == vol["name"]]
    assert mount["readOnly"] is True
    f = tmp_path / "agent.yaml"
    f.write_text(yaml.safe_dump(config_file(objs, "agent.yaml")))
    cp = agent_config.load(str(f)).controlplane
    assert cp is not None
    assert cp.token_file == f"{mount['mountPath']}/{token['path']}"
    assert not cp.token and not cp.ca_token_file    # the one token for ADS and the CA
    assert "node-tokens" not in {v["name"] for v in spec["volumes"]}


def test_chart_one_replica_has_no_budget() -> None:
    """minAvailable 1 of 1 would block every node drain."""
    objs = render({"controlplane": {"replicas": 1}})
    assert deployment(objs)["spec"]["replicas"] == 1
    assert not [o for o in objs if o["kind"] == "PodDisruptionBudget"]


def test_chart_node_token_credential(tmp_path: Path) -> None:
    """For an external meshnode control plane run from files (no API server to review)."""
    objs = render({"controlplane": {"enabled": False, "externalAddress": "cp.example:15012",
                                    "agentCredential": "nodeToken"}})
    spec = find(objs, "DaemonSet", "meshnode-node")["spec"]["template"]["spec"]
    assert not [v for v in spec["volumes"] if "projected" in v]
    (m,) = [m for m in container(spec, "agent")["volumeMounts"] if m["name"] == "node-tokens"]
    assert m["subPathExpr"] == "$(NODE_NAME)"
    assert config_file(objs, "agent.yaml")["controlplane"]["token_file"] == m["mountPath"]
    # ...and the projected token for an external one that reviews tokens (istiod).
    objs = render({"controlplane": {"enabled": False, "externalAddress": "istiod:15012"}})
    spec = find(objs, "DaemonSet", "meshnode-node")["spec"]["template"]["spec"]
    assert [v for v in spec["volumes"] if "projected" in v]


def test_chart_refuses_an_unknown_credential() -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmError, match="agentCredential"):
        render({"controlplane": {"agentCredential": "password"}})


def test_chart_trusted_node_accounts_reach_the_args() -> None:
    objs = render({"controlplane": {"trustedNodeAccounts": ["meshnode-system/meshnode-node",
                                                            "istio-system/ztunnel"]}})
    assert cp_args(objs).trusted_node_account == ["meshnode-system/meshnode-node",
                                                  "istio-system/ztunnel"]
