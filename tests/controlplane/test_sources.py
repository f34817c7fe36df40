"""The real control plane served from Kubernetes and Istio objects, end to end over gRPC:
a manifests directory (`config`) and the API server (`kubeconfig`, the fake one in
testing/fakeapi.py). What an agent's ADS stream receives, how edits and pod churn reach it,
that two replicas serve identical versions, and the CA's node check against the objects."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml

from controlplane.server import ControlPlane, ControlPlaneConfig
from testing import fakeapi
from testing.fakeapi import CONTROLPLANE_RESOURCES, FakeApi, obj
from tests.controlplane.harness import (
    ADDRESS_TYPE,
    AUTHORIZATION_TYPE,
    AdsClient,
    channel,
    decode,
    eventually,
    names,
    run,
)

NS = {"apiVersion": "v1", "kind": "Namespace",
      "metadata": {"name": "shop", "labels": {"istio.io/dataplane-mode": "ambient"}}}
NODE = {"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node1", "labels": {"topology.kubernetes.io/region": "r1",
                                                 "topology.kubernetes.io/zone": "z1"}}}
SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
           "spec": {"clusterIP": "198.18.100.10", "selector": {"app": "web"},
                    "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}
POLICY = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
          "metadata": {"name": "allow-sleep", "namespace": "shop"},
          "spec": {"selector": {"matchLabels": {"app": "web"}}, "action": "ALLOW",
                   "rules": [{"from": [{"source": {
                       "principals": ["cluster.local/ns/shop/sa/sleep"]}}]}]}}
WEB_UID = "Kubernetes//Pod/shop/web-0"
WEB_SVC = "shop/web.shop.svc.cluster.local"


def pod(name: str, ip: str, sa: str = "web", node: str = "node1", app: str = "web") -> Any:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "uid": f"uid-{name}",
                         "labels": {"app": app}},
            "spec": {"nodeName": node, "serviceAccountName": sa,
                     "containers": [{"name": "app", "ports": [
                         {"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def write(path: Path, *docs: Any) -> None:
    path.write_text(yaml.safe_dump_all(docs))


@asynccontextmanager
async def serving(tmp: Path, **source: Any) -> AsyncIterator[ControlPlane]:
    cp = ControlPlane(ControlPlaneConfig(address="127.0.0.1:0", state_dir=tmp / "state",
                                         **source))
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop(0)


async def addresses(cp: ControlPlane, node: str = "node1") -> tuple[AdsClient, Any]:
    ch = channel(cp)
    c = AdsClient(ch, cp.node_token(node))
    r = await c.subscribe(ADDRESS_TYPE)
    await c.ack(r)
    return c, r


def test_manifests_are_served_as_workloads_services_and_policies(tmp_path: Path) -> None:
    conf = tmp_path / "manifests"
    conf.mkdir()
    write(conf / "base.yaml", NS, NODE, SERVICE, POLICY)
    write(conf / "web.yaml", pod("web-0", "198.18.1.2"))

    async def main() -> None:
        async with serving(tmp_path, config=conf) as cp:
            c, r = await addresses(cp)
            assert names(r) == [WEB_UID, WEB_SVC]
            got = {res.name: decode(res) for res in r.resources}
            w = got[WEB_UID].workload
            assert (w.name, w.namespace, w.service_account, w.node) == (
                "web-0", "shop", "web", "node1")
            assert w.locality.region == "r1" and w.locality.zone == "z1"
            # The named targetPort resolved against this pod's container port.
            assert dict(w.services)[WEB_SVC].ports[0].target_port == 8080
            assert list(w.authorization_policies) == ["shop/allow-sleep"]
            p = await c.subscribe(AUTHORIZATION_TYPE)
            assert names(p) == ["shop/allow-sleep"]
            c.close()
    run(main())


def test_a_manifest_edit_reaches_the_stream_as_a_delta(tmp_path: Path) -> None:
    conf = tmp_path / "manifests"
    conf.mkdir()
    write(conf / "base.yaml", NS, NODE, SERVICE)
    write(conf / "web.yaml", pod("web-0", "198.18.1.2"))

    async def main() -> None:
        async with serving(tmp_path, config=conf) as cp:
            c, _ = await addresses(cp)
            write(conf / "web-1.yaml", pod("web-1", "198.18.1.3"))
            added = await c.recv(timeout=3)
            assert names(added) == ["Kubernetes//Pod/shop/web-1"]
            assert not added.removed_resources
            await c.ack(added)
            (conf / "web.yaml").unlink()
            gone = await c.recv(timeout=3)
            assert list(gone.removed_resources) == [WEB_UID] and not gone.resources
            c.close()
    run(main())


def test_two_replicas_on_one_source_serve_identical_versions(tmp_path: Path) -> None:
    """A stream that moves to the other replica, with the versions it holds, is sent
    nothing and loses nothing."""
    conf = tmp_path / "manifests"
    conf.mkdir()
    write(conf / "all.yaml", NS, NODE, SERVICE, POLICY, pod("web-0", "198.18.1.2"),
          pod("sleep-0", "198.18.1.4", sa="sleep", app="sleep"))

    async def main() -> None:
        async with serving(tmp_path / "a", config=conf) as one, \
                serving(tmp_path / "b", config=conf) as two:
            c1, r1 = await addresses(one)
            held = {res.name: res.version for res in r1.resources}
            assert len(held) == 3
            c1.close()
            c2 = AdsClient(channel(two), two.node_token("node1"))
            r2 = await c2.subscribe(ADDRESS_TYPE, initial_resource_versions=held)
            assert not r2.resources and not r2.removed_resources
            c2.close()
    run(main())


def test_pod_churn_in_the_api_server_reaches_the_stream_within_a_second(tmp_path: Path) -> None:
    async def main() -> None:
        api = FakeApi(CONTROLPLANE_RESOURCES)
        api.put("namespaces", obj(fakeapi.NAMESPACES, "shop", metadata=NS["metadata"]))
        api.put("nodes", obj(fakeapi.NODES, "node1", metadata=NODE["metadata"]))
        api.put("services", SERVICE | {"metadata": {**SERVICE["metadata"]}})
        await api.start()
        try:
            async with serving(tmp_path, kubeconfig=api.kubeconfig(tmp_path / "kc")) as cp:
                assert cp.ready()
                c, r = await addresses(cp)
                assert names(r) == [WEB_SVC]
                loop = asyncio.get_running_loop()
                for i in range(5):
                    t0 = loop.time()
                    added = api.put("pods", pod(f"web-{i}", f"198.18.1.{10 + i}"))
                    resp = await c.recv(timeout=1)
                    assert f"Kubernetes//Pod/shop/web-{i}" in names(resp)
                    await c.ack(resp)
                    assert loop.time() - t0 < 1.0
                    api.delete("pods", added["metadata"]["uid"])
                    resp = await c.recv(timeout=1)
                    assert f"Kubernetes//Pod/shop/web-{i}" in resp.removed_resources
                    await c.ack(resp)
                c.close()
        finally:
            await api.stop()
    run(main(), timeout=40)


def test_the_ca_signs_only_identities_on_the_callers_node(tmp_path: Path) -> None:
    conf = tmp_path / "manifests"
    conf.mkdir()
    write(conf / "all.yaml", NS, NODE, pod("web-0", "198.18.1.2"))

    async def main() -> None:
        async with serving(tmp_path, config=conf) as cp:
            assert cp.store.has_identity_on_node("shop", "web", "node1")
            assert not cp.store.has_identity_on_node("shop", "web", "node2")
            assert not cp.store.has_identity_on_node("shop", "sleep", "node1")
            (conf / "all.yaml").write_text(yaml.safe_dump_all([NS, NODE]))
            await eventually(lambda: not cp.store.has_identity_on_node("shop", "web", "node1"),
                             timeout=5)
    run(main())


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", "controlplane", *args],
                          capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])


def test_check_lists_each_bad_object_and_exits_2(tmp_path: Path) -> None:
    conf = tmp_path / "manifests"
    conf.mkdir()
    bad = POLICY | {"spec": {**POLICY["spec"], "action": "FOO"}}
    write(conf / "all.yaml", NS, bad)
    r = cli("--check", "--config", str(conf))
    assert r.returncode == 2, r.stderr
    assert r.stdout.splitlines() == [
        'AuthorizationPolicy shop/allow-sleep: spec.action: Unsupported value: "FOO": '
        'supported values: "ALLOW", "DENY", "AUDIT", "CUSTOM"'], r.stdout
    assert "Traceback" not in r.stderr
    write(conf / "all.yaml", NS, POLICY)
    good = cli("--check", "--config", str(conf))
    assert (good.returncode, good.stdout) == (0, "")


def test_no_source_and_a_bad_kubeconfig_are_clear_errors(tmp_path: Path) -> None:
    r = cli("--state-dir", str(tmp_path / "s"), "--address", "127.0.0.1:0",
            "--metrics-address", "")
    assert r.returncode == 2 and "no source" in r.stderr and "Traceback" not in r.stderr
    r = cli("--kubeconfig", str(tmp_path / "nope"), "--state-dir", str(tmp_path / "s"),
            "--address", "127.0.0.1:0", "--metrics-address", "")
    assert r.returncode == 2, r.stderr
    assert "nope" in r.stderr and "Traceback" not in r.stderr
    r = cli("--config", str(tmp_path / "missing"), "--state-dir", str(tmp_path / "s"),
            "--address", "127.0.0.1:0", "--metrics-address", "")
    assert r.returncode == 2 and "missing" in r.stderr and "Traceback" not in r.stderr


def test_the_shipped_example_manifests_and_the_demos_agree_and_check_clean() -> None:
    import demo.mesh

    example = Path(__file__).resolve().parents[2] / "controlplane/examples/manifests"
    assert list(yaml.safe_load_all((example / "demo.yaml").read_text())) == \
        demo.mesh.example_manifests()
    r = cli("--check", "--config", str(example))
    assert (r.returncode, r.stdout, "Traceback" in r.stderr) == (0, "", False), r.stderr
