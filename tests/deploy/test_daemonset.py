"""The two node DaemonSets (agent: meshnode-node, proxy: meshnode-proxy) against the code they
run: least privilege, the host mounts, update strategies that let the proxy surge, probes on
endpoints the agent and the proxy really serve, and configs the daemons accept."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from agent import config as agent_config
from agent.install.config import PluginEntry
from agent.nodeagent.http import make_app
from agent.nodeagent.pods import PodStore
from proxy import config as proxy_config
from proxy.admin import make_admin_app
from tests.deploy.manifests import config_file, container, find, plain, render

Obj = dict[str, Any]

# The capability sets the code needs (reasons: deploy/daemonset.yaml, docs/install.md).
AGENT_CAPS = {"NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_PTRACE", "BPF", "PERFMON"}
PROXY_CAPS = {"NET_ADMIN", "SYS_ADMIN", "BPF"}


def sources() -> list[tuple[str, list[Obj]]]:
    return [("plain", [o for _f, o in plain()]), ("helm", render())]


@pytest.fixture(params=sources(), ids=lambda s: s[0])
def objs(request: pytest.FixtureRequest) -> list[Obj]:
    value: list[Obj] = request.param[1]
    return value


def ds_spec(objs: list[Obj]) -> Obj:
    """The agent's pod spec."""
    spec: Obj = find(objs, "DaemonSet", "meshnode-node")["spec"]["template"]["spec"]
    return spec


def proxy_spec(objs: list[Obj]) -> Obj:
    spec: Obj = find(objs, "DaemonSet", "meshnode-proxy")["spec"]["template"]["spec"]
    return spec


def test_named_as_the_cni_plugin_exempts_it(objs: list[Obj]) -> None:
    """The plugin lets meshnode-system/meshnode-node-* pods through without the agent."""
    ds = find(objs, "DaemonSet", "meshnode-node")
    entry = PluginEntry()
    assert ds["metadata"]["namespace"] == entry.agent_pod_namespace
    assert f"{ds['metadata']['name']}-".startswith(entry.agent_pod_name_prefix)


def test_no_container_is_privileged(objs: list[Obj]) -> None:
    for o in objs:
        if o["kind"] not in ("DaemonSet", "Deployment"):
            continue
        for c in o["spec"]["template"]["spec"]["containers"]:
            sc = c.get("securityContext", {})
            assert sc.get("privileged") is not True, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]


def test_capabilities_are_exactly_what_the_code_needs(objs: list[Obj]) -> None:
    spec = ds_spec(objs)
    assert set(container(spec, "agent")["securityContext"]["capabilities"]["add"]) == AGENT_CAPS
    assert set(container(proxy_spec(objs), "proxy")["securityContext"]["capabilities"]["add"]) \
        == PROXY_CAPS


def test_what_the_api_server_would_refuse(objs: list[Obj]) -> None:
    """Rules of the API server's validation that no schema expresses: Bidirectional
    propagation only for privileged containers; allowPrivilegeEscalation=false is refused
    together with SYS_ADMIN."""
    for o in objs:
        if o["kind"] not in ("DaemonSet", "Deployment"):
            continue
        for c in o["spec"]["template"]["spec"]["containers"]:
            sc = c.get("securityContext", {})
            if not sc.get("privileged"):
                for m in c.get("volumeMounts", []):
                    assert m.get("mountPropagation") != "Bidirectional", (c["name"], m)
            if "SYS_ADMIN" in sc.get("capabilities", {}).get("add", []):
                assert sc.get("allowPrivilegeEscalation") is not False, c["name"]


def host_mounts(spec: Obj, name: str) -> dict[str, Obj]:
    """host path -> the container's mount of it."""
    volumes = {v["name"]: v for v in spec["volumes"]}
    return {volumes[m["name"]]["hostPath"]["path"]: m
            for m in container(spec, name)["volumeMounts"]
            if "hostPath" in volumes[m["name"]]}


def test_host_mounts(objs: list[Obj]) -> None:
    spec = ds_spec(objs)
    agent = host_mounts(spec, "agent")
    assert {"/opt/cni/bin", "/etc/cni/net.d", "/proc", "/var/run/netns", "/sys/fs/bpf",
            "/sys/fs/cgroup", "/var/run/meshnode"} <= set(agent)
    # writable: per-netns sysctls are written through it (MESHNODE_PROC)
    assert agent["/proc"] == {**agent["/proc"], "mountPath": "/host/proc"}
    assert not agent["/proc"].get("readOnly")
    assert agent["/var/run/netns"]["mountPropagation"] == "HostToContainer"
    assert agent["/sys/fs/bpf"]["mountPropagation"] == "HostToContainer"
    assert not agent["/var/run/meshnode"].get("readOnly")
    proxy = host_mounts(proxy_spec(objs), "proxy")
    # The sockets the two DaemonSets share live there (same host path, same mount path).
    assert proxy["/var/run/meshnode"]["mountPath"] == agent["/var/run/meshnode"]["mountPath"]
    # What needs no CNI or cgroup access does not get them; /proc only for its per-netns
    # sysctl (tcp_migrate_req, written through MESHNODE_PROC).
    assert not {"/opt/cni/bin", "/etc/cni/net.d", "/sys/fs/cgroup"} & set(proxy)
    assert proxy["/proc"]["mountPath"] == "/host/proc"


def test_install_dirs_are_the_host_cni_mounts(objs: list[Obj]) -> None:
    agent = host_mounts(ds_spec(objs), "agent")
    install = config_file(objs, "agent.yaml")["install"]
    assert install["enabled"] is True
    assert install["cni_bin_dir"] == agent["/opt/cni/bin"]["mountPath"]
    assert install["cni_net_dir"] == agent["/etc/cni/net.d"]["mountPath"]


def test_sockets_are_on_the_shared_host_dir(objs: list[Obj]) -> None:
    a = config_file(objs, "agent.yaml")
    p = config_file(objs, "proxy.yaml")
    shared = Path(host_mounts(ds_spec(objs), "agent")["/var/run/meshnode"]["mountPath"])
    assert a["zds_socket"] == p["zds_socket"]
    assert a["mesh_socket"] == p["mesh_socket"]
    for path in (a["cni_socket"], a["zds_socket"], a["mesh_socket"], a["state_dir"]):
        assert Path(path) == shared or shared in Path(path).parents, path
    # The plugin on the host dials this path: it must be the host path too.
    assert PluginEntry().agent_socket == a["cni_socket"]


def test_host_namespaces_priority_tolerations(objs: list[Obj]) -> None:
    agent, proxy = ds_spec(objs), proxy_spec(objs)
    assert agent["hostNetwork"] is True and agent["hostPID"] is True
    # The proxy receives netns fds: it needs no host PID namespace (and no API token).
    assert proxy["hostNetwork"] is True and not proxy.get("hostPID")
    assert proxy["automountServiceAccountToken"] is False
    for spec in (agent, proxy):
        assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
        assert spec["priorityClassName"] == "system-node-critical"
        tolerations = spec["tolerations"]
        assert {"operator": "Exists"} in tolerations  # every taint
        assert any(t.get("key") == "meshnode.io/not-ready" for t in tolerations)
    assert proxy["tolerations"] == agent["tolerations"]  # a proxy wherever pods are captured


def test_the_agent_and_the_proxy_are_separate_daemonsets(objs: list[Obj]) -> None:
    dss = {o["metadata"]["name"]: o for o in objs if o["kind"] == "DaemonSet"}
    assert set(dss) == {"meshnode-node", "meshnode-proxy"}
    assert [c["name"] for c in ds_spec(objs)["containers"]] == ["agent"]
    assert [c["name"] for c in proxy_spec(objs)["containers"]] == ["proxy"]
    # Distinct selectors: neither DaemonSet adopts the other's pods.
    sel = {n: ds["spec"]["selector"]["matchLabels"] for n, ds in dss.items()}
    assert sel["meshnode-node"] != sel["meshnode-proxy"]
    for name, ds in dss.items():
        labels = ds["spec"]["template"]["metadata"]["labels"]
        assert sel[name].items() <= labels.items(), name
        other = sel["meshnode-proxy" if name == "meshnode-node" else "meshnode-node"]
        assert not other.items() <= labels.items(), name
    # The plugin exempts only the agent's pods; the proxy's never reach CNI (host network),
    # and must not look like the agent's either.
    assert not "meshnode-proxy-".startswith(PluginEntry().agent_pod_name_prefix)


def test_update_strategies(objs: list[Obj]) -> None:
    """The proxy surges (the new one is ready before the old one drains); the agent cannot
    (two would bind the same sockets) and need not (pods stay captured without it)."""
    agent = find(objs, "DaemonSet", "meshnode-node")["spec"]
    proxy = find(objs, "DaemonSet", "meshnode-proxy")["spec"]
    assert agent["updateStrategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}
    assert proxy["updateStrategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    drain = config_file(objs, "proxy.yaml")["drain_seconds"]
    assert proxy["template"]["spec"]["terminationGracePeriodSeconds"] > drain


def test_the_surging_proxy_declares_no_host_port(objs: list[Obj]) -> None:
    """On the host network every containerPort is a hostPort; the scheduler would then keep
    the surge pod off a node whose old pod holds it."""
    for c in proxy_spec(objs)["containers"]:
        assert not c.get("ports"), c["name"]


def test_downward_api_env(objs: list[Obj]) -> None:
    want = {"NODE_NAME": "spec.nodeName", "POD_NAME": "metadata.name",
            "POD_NAMESPACE": "metadata.namespace", "INSTANCE_IP": "status.podIP"}
    fixed = {
        # MESHNODE_DAEMONSET: the agent's own DaemonSet (uninstall vs upgrade on SIGTERM)
        "agent": {"MESHNODE_PROC": "/host/proc", "MESHNODE_BPF_CGROUP": "/host/sys/fs/cgroup",
                  "MESHNODE_DAEMONSET": "meshnode-node"},
        # the proxy attaches no cgroup program; it writes tcp_migrate_req through /host/proc
        "proxy": {"MESHNODE_PROC": "/host/proc"},
    }
    for name, spec in (("agent", ds_spec(objs)), ("proxy", proxy_spec(objs))):
        envs = container(spec, name)["env"]
        env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
               for e in envs if "valueFrom" in e}
        assert env == want, name
        assert {e["name"]: e["value"] for e in envs if "value" in e} == fixed[name], name


def test_resources_are_set(objs: list[Obj]) -> None:
    for o in objs:
        if o["kind"] in ("DaemonSet", "Deployment"):
            for c in o["spec"]["template"]["spec"]["containers"]:
                assert {"cpu", "memory"} <= set(c["resources"]["requests"]), c["name"]
                assert "memory" in c["resources"]["limits"], c["name"]


def test_configs_load_with_the_daemons_own_loaders(objs: list[Obj], tmp_path: Path) -> None:
    for key, load in (("agent.yaml", agent_config.load), ("proxy.yaml", proxy_config.load)):
        f = tmp_path / key
        f.write_text(find(objs, "ConfigMap", "meshnode-config")["data"][key])
        load(str(f))
    a = agent_config.load(str(tmp_path / "agent.yaml"))
    assert a.capture.backend == "iptables"
    assert a.controlplane is not None and a.controlplane.address.startswith(
        "meshnode-controlplane.meshnode-system.svc:")


def test_plain_configmap_documents_the_ebpf_option() -> None:
    text = (Path(__file__).resolve().parents[2] / "deploy" / "configmap.yaml").read_text()
    assert "# backend: ebpf" in text


# --- probes: served by the real apps on the configured address ----------------------------

class _ProxyState:
    def config_dump(self) -> dict[str, Any]:
        return {}

    def ready(self) -> bool:
        return True


def _statuses(make: Any, paths: list[str]) -> list[int]:
    """GET each path from a fresh app (an aiohttp app is bound to one event loop)."""
    async def main() -> list[int]:
        async with TestClient(TestServer(make())) as client:
            return [(await client.get(p)).status for p in paths]
    return asyncio.run(main())


def _probes(c: Obj) -> list[Obj]:
    return [c[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")]


def test_agent_probes_hit_what_the_agent_serves(objs: list[Obj], tmp_path: Path) -> None:
    host, _, port = config_file(objs, "agent.yaml")["http_address"].rpartition(":")
    probes = _probes(container(ds_spec(objs), "agent"))
    assert probes[2]["path"] == "/readyz"
    for probe in probes:
        assert (probe["host"], probe["port"]) == (host, int(port)), probe
    statuses = _statuses(lambda: make_app(PodStore(tmp_path), lambda: True),
                         [p["path"] for p in probes])
    assert statuses == [200] * len(probes), probes


def test_proxy_probes_hit_what_the_proxy_serves(objs: list[Obj]) -> None:
    address = config_file(objs, "proxy.yaml")["admin_address"]
    host, _, port = address.rpartition(":")
    c = container(proxy_spec(objs), "proxy")
    probes = [c[k]["httpGet"] for k in ("startupProbe", "livenessProbe")]
    for probe in probes:
        assert (probe["host"], probe["port"]) == (host, int(port)), probe
    # Readiness asks its own proxy (X-Meshnode-Proxy-Pod): tests/proxy_admin runs this very
    # command against two real proxies on one address.
    cmd = c["readinessProbe"]["exec"]["command"]
    assert cmd[:2] == ["python3", "-c"] and cmd[3:] == [address, "/healthz/ready"]
    compile(cmd[2], "readinessProbe", "exec")
    paths = [p["path"] for p in probes] + [cmd[4]]
    statuses = _statuses(lambda: make_admin_app(_ProxyState()), paths)
    assert statuses == [200] * len(paths), paths


def test_probe_paths_are_not_just_any_path(tmp_path: Path) -> None:
    """The check above would be empty if unknown paths answered 200."""
    assert _statuses(lambda: make_app(PodStore(tmp_path), lambda: True), ["/nope"]) == [404]
    assert _statuses(lambda: make_admin_app(_ProxyState()), ["/healthz"]) == [404]


def test_controlplane_listens_where_the_service_and_agents_point() -> None:
    objs = [o for _f, o in plain()]
    dep = find(objs, "Deployment", "meshnode-controlplane")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    from cli.main import build_parser

    args = build_parser().parse_args(c["args"])
    port = int(args.address.rpartition(":")[2])
    svc = find(objs, "Service", "meshnode-controlplane")
    assert svc["spec"]["ports"][0]["targetPort"] == port
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    cp = config_file(objs, "agent.yaml")["controlplane"]
    svc_port = svc["spec"]["ports"][0]["port"]
    assert cp["address"] == f"meshnode-controlplane.meshnode-system.svc:{svc_port}"
    assert cp["server_name"] in args.server_name
    assert dep["spec"]["template"]["spec"]["hostNetwork"] is True
    assert any(t.get("key") == "meshnode.io/not-ready"
               for t in dep["spec"]["template"]["spec"]["tolerations"])


def test_rbac_is_the_documented_minimum() -> None:
    objs = [o for _f, o in plain()]
    role = find(objs, "ClusterRole", "meshnode-node")
    rules = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
             for r in rule["resources"] for v in rule["verbs"]}
    assert rules == {("", "pods", v) for v in ("list", "watch", "patch")} | \
        {("", "namespaces", v) for v in ("list", "watch")} | \
        {("", "nodes", v) for v in ("get", "patch")}
    binding = find(objs, "ClusterRoleBinding", "meshnode-node")
    ds = find(objs, "DaemonSet", "meshnode-node")
    proxy = find(objs, "DaemonSet", "meshnode-proxy")["spec"]["template"]["spec"]
    assert "serviceAccountName" not in proxy and proxy["automountServiceAccountToken"] is False
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "meshnode-node",
                                    "namespace": "meshnode-system"}]
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == "meshnode-node"
    # One namespaced Role: `get` on the agent's own DaemonSet only (uninstall detection).
    ns_role = find(objs, "Role", "meshnode-node")
    assert ns_role["metadata"]["namespace"] == ds["metadata"]["namespace"]
    assert ns_role["rules"] == [{"apiGroups": ["apps"], "resources": ["daemonsets"],
                                 "resourceNames": [ds["metadata"]["name"]], "verbs": ["get"]}]
    ns_binding = find(objs, "RoleBinding", "meshnode-node")
    assert ns_binding["metadata"]["namespace"] == ds["metadata"]["namespace"]
    assert ns_binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                     "name": "meshnode-node"}
    assert ns_binding["subjects"] == binding["subjects"]
    assert [(o["kind"], o["metadata"]["name"]) for o in objs
            if o["kind"] in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")] == [
        # the control plane's list/watch role (tests/controlplane/kube/test_rbac.py)
        ("ClusterRole", "meshnode-controlplane"), ("ClusterRoleBinding", "meshnode-controlplane"),
        ("ClusterRole", "meshnode-node"), ("ClusterRoleBinding", "meshnode-node"),
        ("Role", "meshnode-node"), ("RoleBinding", "meshnode-node")]


def test_one_daemonset_per_file() -> None:
    """daemonset.yaml is the agent's, proxy-daemonset.yaml the proxy's."""
    deploy = Path(__file__).resolve().parents[2] / "deploy"
    for file, name in (("daemonset.yaml", "meshnode-node"),
                       ("proxy-daemonset.yaml", "meshnode-proxy")):
        (ds,) = [d for d in yaml.safe_load_all((deploy / file).read_text()) if d]
        assert (ds["kind"], ds["metadata"]["name"]) == ("DaemonSet", name)
