"""The Helm chart, rendered by Helm's Go SDK (helm-python-sdk), renders the same objects as
the plain manifests with its default values, and its switches do what they say."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import config as agent_config
from tests.deploy.manifests import CHART, config_file, container, find, plain, render

Obj = dict[str, Any]


def normal(obj: Obj) -> Obj:
    """An object without what differs by design: Helm's bookkeeping labels, the config
    checksum annotation, and the formatting (comments, key order) of embedded YAML files."""
    o: Obj = yaml.safe_load(yaml.safe_dump(obj))
    o["metadata"].pop("labels", None)
    o["metadata"].pop("annotations", None)
    tmpl = o.get("spec", {}).get("template", {})
    if tmpl:
        tmpl["metadata"].get("annotations", {}).pop("checksum/config", None)
    if o["kind"] == "ConfigMap":
        o["data"] = {k: yaml.safe_load(v) for k, v in o["data"].items()}
    return o


def keyed(objs: list[Obj]) -> dict[tuple[str, str], Obj]:
    return {(o["kind"], o["metadata"]["name"]): normal(o) for o in objs}


def test_defaults_render_the_plain_manifests() -> None:
    want = keyed([o for _f, o in plain()])
    got = keyed(render({"namespace": {"create": True}}))
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key] == want[key], key


def test_lint_is_clean() -> None:
    import helm_python as helm

    report = helm.lint(str(CHART), strict=True, namespace="meshnode-system",
                       kube_version="v1.30.0")
    assert not report["errors"], report
    assert not [m for m in report["messages"] if m["severity"] >= 2], report


def test_only_meshnode_system() -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmError, match="meshnode-system"):
        render(namespace="default")


def test_ebpf_backend_mounts_the_kernel_headers(tmp_path: Path) -> None:
    objs = render({"capture": {"backend": "ebpf", "fallback": "iptables"}})
    ds = find(objs, "DaemonSet", "meshnode-node")["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in container(ds, "agent")["volumeMounts"]}
    assert mounts["/lib/modules"]["readOnly"] and mounts["/usr/src"]["readOnly"]
    f = tmp_path / "agent.yaml"
    f.write_text(yaml.safe_dump(config_file(objs, "agent.yaml")))
    cfg = agent_config.load(str(f))
    assert (cfg.capture.backend, cfg.capture.fallback) == ("ebpf", "iptables")
    # and not without it
    ds = find(render(), "DaemonSet", "meshnode-node")["spec"]["template"]["spec"]
    assert "/lib/modules" not in {m["mountPath"] for m in container(ds, "agent")["volumeMounts"]}


def test_without_a_control_plane(tmp_path: Path) -> None:
    objs = render({"controlplane": {"enabled": False}})
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert ("Deployment", "meshnode-controlplane") not in kinds
    assert ("Service", "meshnode-controlplane") not in kinds
    agent = config_file(objs, "agent.yaml")
    assert "controlplane" not in agent
    assert "mesh_socket" not in config_file(objs, "proxy.yaml")
    ds = find(objs, "DaemonSet", "meshnode-node")["spec"]["template"]["spec"]
    assert not [v for v in ds["volumes"] if "secret" in v]  # no secrets to create
    f = tmp_path / "agent.yaml"
    f.write_text(yaml.safe_dump(agent))
    assert agent_config.load(str(f)).controlplane is None


def test_external_control_plane() -> None:
    objs = render({"controlplane": {"enabled": False, "externalAddress": "cp.example:15012"}})
    assert config_file(objs, "agent.yaml")["controlplane"]["address"] == "cp.example:15012"
    assert not [o for o in objs if o["kind"] == "Deployment"]


def test_values_reach_the_objects() -> None:
    objs = render({"image": {"repository": "registry.example/meshnode", "tag": "1.2.3"},
                   "capture": {"backend": "nftables", "excludeOutboundPorts": [9000]},
                   "selection": {"mode": "namespaces", "namespaces": ["shop"]},
                   "tolerations": [{"key": "dedicated", "operator": "Exists"}]})
    for name in ("meshnode-node", "meshnode-proxy"):
        ds = find(objs, "DaemonSet", name)["spec"]["template"]["spec"]
        assert {c["image"] for c in ds["containers"]} == {"registry.example/meshnode:1.2.3"}
        assert ds["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    agent = config_file(objs, "agent.yaml")
    assert agent["capture"]["backend"] == "nftables"
    assert agent["capture"]["exclude_outbound_ports"] == [9000]
    assert agent["selection"]["namespaces"] == ["shop"]


def test_proxy_values_reach_the_proxy_daemonset() -> None:
    objs = render({"terminationGracePeriodSeconds": 100, "proxy": {"drainSeconds": 90}})
    spec = find(objs, "DaemonSet", "meshnode-proxy")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == 100
    assert config_file(objs, "proxy.yaml")["drain_seconds"] == 90
    # a config change rolls both DaemonSets
    for name in ("meshnode-node", "meshnode-proxy"):
        ann = find(objs, "DaemonSet", name)["spec"]["template"]["metadata"]["annotations"]
        assert ann["checksum/config"]
