"""The chart's values: values.schema.json refuses bad values with a message naming the value
(Helm's own SDK checks it, as `helm install` and `helm template` do), the default install
(no example mesh, nothing per node, the projected token, the budget, NOTES.txt), and each knob
reaching the objects it is for. The objects themselves are checked against Kubernetes'
schemas in test_schema.py (every knob set: its "knobs" variant)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from agent.config import Fallback, SelectionMode
from agent.redirect.spec import Backend, IptablesFlavour, Profile
from cli.main import build_parser
from core.stats import make_stats_app
from tests.deploy.manifests import CHART, config_file, container, find, notes, render

Obj = dict[str, Any]
SCHEMA: Obj = json.loads((CHART / "values.schema.json").read_text())
DEFAULTS: Obj = yaml.safe_load((CHART / "values.yaml").read_text())
WORKLOADS = {"agent": ("DaemonSet", "meshnode-node", "agent"),
             "proxy": ("DaemonSet", "meshnode-proxy", "proxy"),
             "controlplane": ("Deployment", "meshnode-controlplane", "controlplane")}


def helm_error(values: Obj) -> str:
    """The error of rendering with these values (the test fails if it renders)."""
    import helm_python as helm

    with pytest.raises(helm.HelmError) as info:
        render(values)
    return str(info.value)


def pod(objs: list[Obj], workload: str) -> Obj:
    kind, name, _ = WORKLOADS[workload]
    spec: Obj = find(objs, kind, name)["spec"]["template"]
    return spec


def args_of(objs: list[Obj], workload: str) -> Any:
    c = container(pod(objs, workload)["spec"], WORKLOADS[workload][2])
    return build_parser().parse_args(c["args"])


# --- the schema -----------------------------------------------------------------------------

BAD: list[tuple[Obj, str]] = [
    ({"capture": {"backend": "foo"}},
     "at '/capture/backend': value must be one of 'iptables', 'nftables', 'ebpf'"),
    ({"image": {"tag": 1.1}}, "at '/image/tag': got number, want string"),
    ({"captrue": {"backend": "ebpf"}}, "additional properties 'captrue' not allowed"),
    ({"agent": {"logLevl": "debug"}}, "at '/agent': additional properties 'logLevl' not allowed"),
    ({"agent": {"logLevel": "verbose"}},
     "at '/agent/logLevel': value must be one of 'debug', 'info', 'warning', 'error'"),
    ({"proxy": {"logFormat": "text"}},
     "at '/proxy/logFormat': value must be one of 'json', 'console'"),
    ({"controlplane": {"podDisruptionBudget": {"minAvaliable": 1}}},
     "at '/controlplane/podDisruptionBudget': additional properties 'minAvaliable' not allowed"),
    ({"controlplane": {"podDisruptionBudget": {"minAvailable": "half"}}},
     "at '/controlplane/podDisruptionBudget/minAvailable': 'half' does not match"),
    ({"metrics": {"podMonitor": {"enable": True}}},
     "at '/metrics/podMonitor': additional properties 'enable' not allowed"),
    ({"metrics": {"podMonitor": {"interval": "30 seconds"}}},
     "at '/metrics/podMonitor/interval': '30 seconds' does not match"),
    ({"metrics": {"ports": {"agent": 70000}}},
     "at '/metrics/ports/agent': maximum: got 70,000, want 65,535"),
    ({"metrics": {"ports": {"proxy": "15020"}}},
     "at '/metrics/ports/proxy': got string, want integer"),
    ({"metrics": {"bindAddress": "10.0.0.1"}},
     "at '/metrics/bindAddress': value must be one of '0.0.0.0', '::', '127.0.0.1', '::1'"),
    ({"selection": {"mode": "some"}},
     "at '/selection/mode': value must be one of 'all', 'namespaces'"),
    ({"capture": {"ipv6": "yes"}}, "at '/capture/ipv6': value must be one of 'auto', true, false"),
    ({"capture": {"fallback": "ebpf"}},
     "at '/capture/fallback': value must be one of '', 'iptables', 'nftables'"),
    ({"capture": {"excludeInboundPorts": [0]}},
     "at '/capture/excludeInboundPorts/0': minimum: got 0, want 1"),
    ({"image": {"pullPolicy": "Sometimes"}},
     "at '/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'"),
    ({"tolerations": [{"operator": "Exist"}]},
     "at '/tolerations/0/operator': value must be one of 'Exists', 'Equal'"),
    ({"controlplane": {"replicas": 0}}, "at '/controlplane/replicas': minimum: got 0, want 1"),
    ({"controlplane": {"trustedNodeAccounts": ["meshnode-node"]}},
     "at '/controlplane/trustedNodeAccounts/0': 'meshnode-node' does not match"),
    ({"controlplane": {"externalAddress": "cp.example"}},
     "at '/controlplane/externalAddress': 'cp.example' does not match"),
    ({"controlplane": {"agentCredential": "password"}},
     "at '/controlplane/agentCredential': value must be one of 'serviceAccountToken', 'nodeToken'"),
    ({"controlplane": {"affinity": {"nodeAfinity": {}}}},
     "at '/controlplane/affinity': additional properties 'nodeAfinity' not allowed"),
    ({"agent": {"podLabels": {"team": 1}}}, "at '/agent/podLabels/team': got number, want string"),
    ({"proxy": {"priorityClassName": 5}}, "at '/proxy/priorityClassName': got number, want string"),
    ({"controlplane": {"resources": {"request": {"cpu": "1"}}}},
     "at '/controlplane/resources': additional properties 'request' not allowed"),
]


@pytest.mark.parametrize(("values", "message"), BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_the_schema_refuses_bad_values(values: Obj, message: str) -> None:
    import helm_python as helm

    error = helm_error(values)
    assert "values don't meet the specifications of the schema" in error, error
    assert message in error, error
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)  # the schema, not a template, refuses them


def test_a_number_tag_from_a_values_file_or_set_is_refused() -> None:
    """The `%!s(float64=1.1)` of the issue: a values file's `tag: 1.1` (a float), and
    `--set image.tag=2` (Helm's --set makes integers), are refused; --set-string passes."""
    import helm_python as helm

    from_file = helm.values_from_yaml("image:\n  tag: 1.1\n")
    assert from_file == {"image": {"tag": 1.1}}
    assert "at '/image/tag': got number, want string" in helm_error(from_file)
    assert "at '/image/tag': got number, want string" in helm_error(
        helm.parse_set_string("image.tag=2"))
    objs = render(helm.parse_set_string_values("image.tag=1.1"))
    for workload in WORKLOADS:
        (c,) = pod(objs, workload)["spec"]["containers"]
        assert c["image"] == "meshnode:1.1"


def test_the_defaults_are_valid_draft_07() -> None:
    import helm_python as helm

    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.Draft7Validator(SCHEMA).validate(DEFAULTS)
    with helm.Chart.load(CHART) as chart:
        assert chart.schema == SCHEMA
        chart.validate_schema({})


def _walk(schema: Obj, values: Any, path: str) -> list[str]:
    """Problems: a value with no schema, an object schema open to unknown keys."""
    out = []
    if schema.get("type") == "object" and "properties" in schema:
        if schema.get("additionalProperties") is not False:
            out.append(f"{path or '/'}: additionalProperties is not false")
        for key, sub in schema["properties"].items():
            out += _walk(sub, (values or {}).get(key) if isinstance(values, dict) else None,
                         f"{path}/{key}")
        if isinstance(values, dict):
            out += [f"{path}/{k}: not in the schema" for k in values
                    if k not in schema["properties"]]
    elif schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        for i, item in enumerate(values or []):
            out += _walk(schema["items"], item, f"{path}/{i}")
    elif not ({"type", "enum"} & set(schema)):
        out.append(f"{path}: untyped")
    return out


# Typed by Kubernetes, not the chart: free-form maps (labels, annotations, nodeSelector,
# resources' quantities) and an affinity's three parts.
OPEN = re.compile(r"/(affinity/\w+|global)$")


def test_every_value_is_typed_and_no_typo_passes() -> None:
    problems = [p for p in _walk(SCHEMA, DEFAULTS, "") if not OPEN.search(p.split(":")[0])]
    assert problems == []
    # Every key the schema knows is in values.yaml (documented there), but these optional ones.
    optional = {"/global", "/controlplane/podDisruptionBudget/maxUnavailable"}

    def keys(schema: Obj, path: str) -> set[str]:
        out = {path}
        for k, sub in schema.get("properties", {}).items():
            if not OPEN.search(f"{path}/{k}"):
                out |= keys(sub, f"{path}/{k}")
        return out

    def value_keys(v: Any, path: str) -> set[str]:
        out = {path}
        if isinstance(v, dict) and not OPEN.search(path):
            for k, sub in v.items():
                out |= value_keys(sub, f"{path}/{k}")
        return out

    assert keys(SCHEMA, "") - value_keys(DEFAULTS, "") - optional == set()


def test_the_enums_are_the_codes() -> None:
    """The schema's enums are exactly what the agent's config and the CLI accept."""
    p = SCHEMA["properties"]
    cap = p["capture"]["properties"]
    assert cap["backend"]["enum"] == [b.value for b in Backend]
    assert cap["iptablesFlavour"]["enum"] == [f.value for f in IptablesFlavour]
    assert cap["profile"]["enum"] == [x.value for x in Profile]
    assert cap["fallback"]["enum"] == [f.value for f in Fallback]
    assert p["selection"]["properties"]["mode"]["enum"] == [m.value for m in SelectionMode]
    parser = build_parser()
    for workload in WORKLOADS:
        choices = {}
        for flag in ("--log-level", "--log-format"):
            (action,) = [a for a in _subparser(parser, workload)._actions
                         if flag in a.option_strings]
            choices[flag] = list(action.choices or ())
        props = p[workload]["properties"]
        assert props["logLevel"]["enum"] == choices["--log-level"], workload
        assert props["logFormat"]["enum"] == choices["--log-format"], workload


def _subparser(parser: Any, name: str) -> Any:
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return sub.choices[name]


def test_relations_the_schema_cannot_say() -> None:
    err = helm_error({"metrics": {"ports": {"agent": 15021}}})
    assert "metrics.ports: agent (15021), proxy (15020) and controlplane (15014) must differ" in err
    assert "must differ" in helm_error({"metrics": {"ports": {"proxy": 15014}}})
    assert "must differ" in helm_error({"metrics": {"ports": {"controlplane": 15012}}})
    err = helm_error({"terminationGracePeriodSeconds": 30, "proxy": {"drainSeconds": 30}})
    assert "terminationGracePeriodSeconds (30) must exceed proxy.drainSeconds (30)" in err
    err = helm_error({"controlplane": {"podDisruptionBudget": {"maxUnavailable": 1}}})
    assert "set minAvailable or maxUnavailable, not both" in err


# --- the default install ---------------------------------------------------------------------

def test_the_default_install_runs_from_the_cluster_alone() -> None:
    """No example mesh (the control plane lists and watches the API server with its service
    account), no Secret in the chart and none per node (a node an autoscaler adds starts its
    agent with the projected token), the budget, and what to do next."""
    objs = render()
    kinds = sorted({o["kind"] for o in objs})
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "Deployment",
                     "PodDisruptionBudget", "Role", "RoleBinding", "Service", "ServiceAccount"]
    assert [o["metadata"]["name"] for o in objs if o["kind"] == "ConfigMap"] == [
        "meshnode-config"]
    cp = args_of(objs, "controlplane")
    assert (cp.config, cp.kubeconfig) == (None, None)  # in-cluster: its service account
    assert cp.trusted_node_account == ["meshnode-system/meshnode-node"]
    spec = pod(objs, "agent")["spec"]
    secrets = {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    assert secrets == {"meshnode-controlplane-root"}  # the cluster's root: the same everywhere
    mounts = container(spec, "agent")["volumeMounts"]
    assert not [m for m in mounts if "subPathExpr" in m]  # nothing chosen by node name
    (projected,) = [v for v in spec["volumes"] if "projected" in v]
    (src,) = projected["projected"]["sources"]
    assert src["serviceAccountToken"]["audience"] == "istio-ca"
    (m,) = [m for m in mounts if m["name"] == projected["name"]]
    token_file = config_file(objs, "agent.yaml")["controlplane"]["token_file"]
    assert token_file == f"{m['mountPath']}/{src['serviceAccountToken']['path']}"
    pdb = find(objs, "PodDisruptionBudget", "meshnode-controlplane")
    assert pdb["spec"]["minAvailable"] == 1
    assert "meshnode check" in notes()


def test_notes_say_what_to_do_next() -> None:
    text = notes()
    commands = [line.split(" -- ", 1)[1] for line in text.splitlines() if " -- meshnode " in line]
    assert [c.split()[1] for c in commands] == ["check", "status"]
    for c in commands:  # real command lines of this CLI
        build_parser().parse_args(shlex.split(c)[1:])
    assert "rollout status ds/meshnode-node ds/meshnode-proxy deploy/meshnode-controlplane" in text
    assert "kubectl label namespace NAMESPACE meshnode.io/dataplane-mode=enabled" in text
    assert "istio.io/dataplane-mode=ambient, enrolls with --set capture.profile=istio" in text
    assert "docs/install.md" in text
    assert "make_secrets.py" in text and "nothing per node" in text
    # the istio profile enrolls with Istio ambient's label
    istio = notes({"capture": {"profile": "istio"}})
    assert "kubectl label namespace NAMESPACE istio.io/dataplane-mode=ambient" in istio
    assert "meshnode.io/dataplane-mode" not in istio
    # no control plane, an external one with node tokens
    alone = notes({"controlplane": {"enabled": False}})
    assert "without mTLS" in alone and "make_secrets" not in alone
    assert "deploy/meshnode-controlplane" not in alone
    ext = notes({"controlplane": {"enabled": False, "externalAddress": "cp.example:15012",
                                  "agentCredential": "nodeToken"}})
    assert "meshnode-node-tokens for every" in ext and "meshnode-controlplane-root" in ext
    assert "selection.mode=namespaces: only pods in shop, web are captured" in notes(
        {"selection": {"mode": "namespaces", "namespaces": ["shop", "web"]}})


# --- the knobs --------------------------------------------------------------------------------

def test_log_level_and_format_per_workload() -> None:
    objs = render({"agent": {"logLevel": "debug", "logFormat": "console"},
                   "proxy": {"logLevel": "warning"},
                   "controlplane": {"logLevel": "error", "logFormat": "console"}})
    got = {w: (args_of(objs, w).log_level, args_of(objs, w).log_format) for w in WORKLOADS}
    assert got == {"agent": ("debug", "console"), "proxy": ("warning", "json"),
                   "controlplane": ("error", "console")}
    assert {args_of(render(), w).log_level for w in WORKLOADS} == {"info"}


def test_pod_metadata_and_priority_per_workload() -> None:
    values: Obj = {w: {"podAnnotations": {"example.com/owner": w},
                       "podLabels": {"team": w, "app.kubernetes.io/name": "hijack"},
                       "priorityClassName": f"{w}-class"} for w in WORKLOADS}
    objs = render(values)
    for w, (kind, name, _) in WORKLOADS.items():
        tmpl = pod(objs, w)
        assert tmpl["metadata"]["annotations"]["example.com/owner"] == w
        labels = tmpl["metadata"]["labels"]
        assert labels["team"] == w
        # the chart's own labels win: the selector still matches
        selector = find(objs, kind, name)["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items()
        assert tmpl["spec"]["priorityClassName"] == f"{w}-class"
    objs = render({w: {"priorityClassName": ""} for w in WORKLOADS})
    assert not [w for w in WORKLOADS if "priorityClassName" in pod(objs, w)["spec"]]


def test_resources_per_workload() -> None:
    objs = render({w: {"resources": {"requests": {"cpu": f"{i + 1}0m", "memory": "32Mi"}}}
                   for i, w in enumerate(WORKLOADS)})
    for i, w in enumerate(WORKLOADS):
        c = container(pod(objs, w)["spec"], WORKLOADS[w][2])
        # Helm merges maps: the default limits stay unless set to null
        assert c["resources"]["requests"] == {"cpu": f"{i + 1}0m", "memory": "32Mi"}
        assert c["resources"]["limits"] == DEFAULTS[w]["resources"]["limits"]


def test_placement_of_the_node_daemonsets_is_one_for_both() -> None:
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "meshnode.io/skip", "operator": "DoesNotExist"}]}]}}}
    objs = render({"affinity": affinity, "nodeSelector": {"kubernetes.io/os": "linux"},
                   "tolerations": [{"key": "gpu", "operator": "Exists"}]})
    for w in ("agent", "proxy"):
        spec = pod(objs, w)["spec"]
        assert spec["affinity"] == affinity
        assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
        assert spec["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    cp = pod(objs, "controlplane")["spec"]
    assert "nodeSelector" not in cp and "nodeAffinity" not in cp["affinity"]
    assert "affinity" not in pod(render(), "agent")["spec"]


def test_control_plane_placement_keeps_one_replica_per_node() -> None:
    own = {"topologyKey": "kubernetes.io/hostname",
           "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "meshnode-controlplane"}}}
    zone = {"topologyKey": "topology.kubernetes.io/zone",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "meshnode-controlplane"}}}
    node = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "node-role.kubernetes.io/infra", "operator": "Exists"}]}]}}
    toleration = {"key": "dedicated", "operator": "Equal", "value": "infra",
                  "effect": "NoSchedule"}
    objs = render({"controlplane": {
        "affinity": {"nodeAffinity": node,
                     "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [zone]}},
        "nodeSelector": {"pool": "infra"}, "tolerations": [toleration]}})
    spec = pod(objs, "controlplane")["spec"]
    assert spec["affinity"]["nodeAffinity"] == node
    assert spec["affinity"]["podAntiAffinity"] == {
        "requiredDuringSchedulingIgnoredDuringExecution": [own, zone]}
    assert spec["nodeSelector"] == {"pool": "infra"}
    assert spec["tolerations"] == [toleration]
    assert pod(objs, "agent")["spec"]["tolerations"] == DEFAULTS["tolerations"]
    assert pod(render(), "controlplane")["spec"]["affinity"] == {
        "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [own]}}


@pytest.mark.parametrize(("budget", "replicas", "want"), [
    ({}, 2, {"minAvailable": 1}),
    ({"minAvailable": 2}, 3, {"minAvailable": 2}),
    ({"minAvailable": "50%"}, 2, {"minAvailable": "50%"}),
    ({"minAvailable": None, "maxUnavailable": 1}, 1, {"maxUnavailable": 1}),
    ({"minAvailable": None, "maxUnavailable": "25%"}, 4, {"maxUnavailable": "25%"}),
    ({}, 1, None),                     # minAvailable 1 of 1 would block every drain
    ({"minAvailable": 3}, 3, None),
    ({"enabled": False}, 2, None),
])
def test_the_disruption_budget(budget: Obj, replicas: int, want: Obj | None) -> None:
    objs = render({"controlplane": {"replicas": replicas, "podDisruptionBudget": budget}})
    pdbs = [o for o in objs if o["kind"] == "PodDisruptionBudget"]
    if want is None:
        assert pdbs == []
        return
    (pdb,) = pdbs
    sel = pdb["spec"].pop("selector")
    assert pdb["spec"] == want
    assert sel["matchLabels"].items() <= pod(objs, "controlplane")["metadata"]["labels"].items()
    assert find(objs, "Deployment", "meshnode-controlplane")["spec"]["replicas"] == replicas


def test_image_tag_defaults_to_the_app_version() -> None:
    app = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert DEFAULTS["image"]["tag"] == ""
    for objs, want in ((render(), f"meshnode:{app}"),
                       (render({"image": {"repository": "r.example/mn", "tag": "2.0-rc1"}}),
                        "r.example/mn:2.0-rc1")):
        assert {pod(objs, w)["spec"]["containers"][0]["image"] for w in WORKLOADS} == {want}


# --- metrics ----------------------------------------------------------------------------------

def _statuses(paths: list[str], ready_path: str) -> list[int]:
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    async def main() -> list[int]:
        async with TestClient(TestServer(make_stats_app(lambda: True, ready_path))) as client:
            return [(await client.get(p)).status for p in paths]
    return asyncio.run(main())


def _listens(objs: list[Obj]) -> dict[str, str]:
    """workload -> the HOST:PORT its metrics listener binds, from its own config or flags."""
    return {"agent": config_file(objs, "agent.yaml")["metrics_address"],
            "proxy": config_file(objs, "proxy.yaml")["metrics_address"],
            "controlplane": args_of(objs, "controlplane").metrics_address}


def test_prometheus_annotations_point_at_the_metrics_listeners() -> None:
    for values in ({}, {"metrics": {"ports": {"agent": 9101, "proxy": 9102,
                                              "controlplane": 9103}}}):
        objs = render(values)
        listens = _listens(objs)
        for w in WORKLOADS:
            ann = pod(objs, w)["metadata"]["annotations"]
            assert ann["prometheus.io/scrape"] == "true"
            assert listens[w] == f"0.0.0.0:{ann['prometheus.io/port']}", w
            assert ann["prometheus.io/path"] == "/metrics"
        # the daemons' debug and admin ports stay on the loopback
        assert config_file(objs, "agent.yaml")["http_address"] == "127.0.0.1:15021"
        assert config_file(objs, "proxy.yaml")["admin_address"] == "127.0.0.1:15000"
    assert _listens(render()) == {"agent": "0.0.0.0:15022", "proxy": "0.0.0.0:15020",
                                  "controlplane": "0.0.0.0:15014"}
    # what the agent's and the proxy's listeners serve there (core/stats.py)
    assert _statuses(["/metrics", "/readyz", "/debug/pods"], "/readyz") == [200, 200, 404]
    assert _statuses(["/metrics", "/config_dump"], "/healthz/ready") == [200, 404]


def test_metrics_bind_address_and_no_annotations() -> None:
    objs = render({"metrics": {"bindAddress": "::", "scrapeAnnotations": False}})
    assert _listens(objs) == {"agent": "[::]:15022", "proxy": "[::]:15020",
                              "controlplane": "[::]:15014"}
    for w in ("agent", "proxy"):
        assert not [k for k in pod(objs, w)["metadata"]["annotations"] if "prometheus" in k]
    assert "annotations" not in pod(objs, "controlplane")["metadata"]
    probe = container(pod(objs, "controlplane")["spec"], "controlplane")["readinessProbe"]
    assert probe["httpGet"]["host"] == "::1"
    local = render({"metrics": {"bindAddress": "127.0.0.1"}})
    assert set(_listens(local).values()) == {"127.0.0.1:15022", "127.0.0.1:15020",
                                             "127.0.0.1:15014"}


def test_pod_monitors() -> None:
    assert not [o for o in render() if o["kind"] == "PodMonitor"]
    objs = render({"metrics": {"podMonitor": {"enabled": True, "interval": "15s",
                                              "labels": {"release": "prom"}},
                               "ports": {"agent": 9101, "proxy": 9102}}})
    pms = {o["metadata"]["name"]: o for o in objs if o["kind"] == "PodMonitor"}
    assert set(pms) == {"meshnode-node", "meshnode-proxy", "meshnode-controlplane"}
    for w, (kind, name, cname) in WORKLOADS.items():
        pm = pms[name]
        assert pm["metadata"]["labels"]["release"] == "prom"
        assert pm["metadata"]["namespace"] == "meshnode-system"
        assert pm["spec"]["selector"]["matchLabels"] == \
            find(objs, kind, name)["spec"]["selector"]["matchLabels"]
        (ep,) = pm["spec"]["podMetricsEndpoints"]
        assert (ep["path"], ep["interval"]) == ("/metrics", "15s")
        port = int(_listens(objs)[w].rpartition(":")[2])
        c = container(pod(objs, w)["spec"], cname)
        if "port" in ep:  # a declared container port, by name
            (declared,) = [p for p in c["ports"] if p["name"] == ep["port"]]
            assert declared["containerPort"] == port
        else:  # the proxy declares none: the address is the pod IP's
            assert not c.get("ports")
            assert [(r["regex"], r["replacement"]) for r in ep["relabelings"]] == [
                ("(.+:.+)", f"[$1]:{port}"), ("([^:]+)", f"$1:{port}")]
            assert {r["targetLabel"] for r in ep["relabelings"]} == {"__address__"}
    no_cp = render({"controlplane": {"enabled": False},
                    "metrics": {"podMonitor": {"enabled": True}}})
    assert {o["metadata"]["name"] for o in no_cp if o["kind"] == "PodMonitor"} == {
        "meshnode-node", "meshnode-proxy"}


def test_docs_install_names_every_value_group() -> None:
    """docs/install.md lists the chart's values; each top-level group is in values.yaml."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "install.md").read_text()
    for key in DEFAULTS:
        assert f"`{key}" in doc, key
