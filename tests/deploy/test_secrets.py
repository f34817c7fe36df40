"""deploy/make_secrets.py makes what the manifests mount, and what the control plane's own
code accepts: a CA root it loads, node tokens it verifies."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from controlplane import nodeauth, pki
from tests.deploy.manifests import DEPLOY, find, plain

Obj = dict[str, Any]


def make(tmp: Path, nodes: list[str]) -> dict[str, dict[str, str]]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_secrets", DEPLOY / "make_secrets.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    docs: list[Obj] = mod.build(tmp, "cluster.local", nodes)
    return {d["metadata"]["name"]: {k: base64.b64decode(v).decode()
                                    for k, v in d["data"].items()} for d in docs}


def test_tokens_and_root_are_what_the_control_plane_accepts(tmp_path: Path) -> None:
    s = make(tmp_path / "ca", ["node-a", "node-b.example"])
    ca = s["meshnode-controlplane-ca"]
    (tmp_path / "c.pem").write_text(ca["root-cert.pem"])
    (tmp_path / "k.pem").write_text(ca["root-key.pem"])
    pki.load_root(tmp_path / "c.pem", tmp_path / "k.pem")
    key = bytes.fromhex(ca["node-token.key"].strip())
    for node, token in s["meshnode-node-tokens"].items():
        assert nodeauth.verify(key, token.strip()) == node
    assert s["meshnode-controlplane-root"]["root-cert.pem"] == ca["root-cert.pem"]


def test_a_second_run_keeps_the_root_and_the_key(tmp_path: Path) -> None:
    first = make(tmp_path / "ca", ["a"])
    second = make(tmp_path / "ca", ["a", "b"])
    assert first["meshnode-controlplane-ca"] == second["meshnode-controlplane-ca"]
    assert first["meshnode-node-tokens"]["a"] == second["meshnode-node-tokens"]["a"]


def test_without_nodes_no_node_tokens(tmp_path: Path) -> None:
    assert sorted(make(tmp_path / "ca", [])) == ["meshnode-controlplane-ca",
                                                 "meshnode-controlplane-root"]


def test_the_manifests_mount_these_secrets_and_keys(tmp_path: Path) -> None:
    made = make(tmp_path / "ca", [])
    objs = [o for _f, o in plain()]
    used: dict[str, Obj] = {}
    for kind, name in (("DaemonSet", "meshnode-node"), ("Deployment", "meshnode-controlplane")):
        spec = find(objs, kind, name)["spec"]["template"]["spec"]
        for v in spec["volumes"]:
            if "secret" in v:
                used[v["secret"]["secretName"]] = v
    assert set(used) == set(made)
    args = find(objs, "Deployment", "meshnode-controlplane")["spec"]["template"]["spec"][
        "containers"][0]["args"]
    for key in made["meshnode-controlplane-ca"]:
        assert f"/etc/meshnode/ca/{key}" in args, key
    # The agent's credential is a projected token, not a Secret
    # (tests/deploy/test_controlplane_deploy.py).
    ds = find(objs, "DaemonSet", "meshnode-node")["spec"]["template"]["spec"]
    assert "node-tokens" not in {v["name"] for v in ds["volumes"]}
