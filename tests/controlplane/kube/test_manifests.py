"""Reading `--config PATH` as `kubectl apply -f PATH` reads it: files of a directory in name
order, multi-document YAML, List kinds, the default namespace, kinds not read, duplicates,
and Istio's own documentation examples unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from controlplane.check import check_config
from controlplane.kube import objects as k
from controlplane.kube.manifests import Manifests, load, parse

DOCS = Path(__file__).parent / "data" / "istio-docs"

NS = """\
apiVersion: v1
kind: Namespace
metadata:
  name: foo
  labels:
    istio.io/dataplane-mode: ambient
"""
SVC = """\
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: foo
spec:
  selector: {{app: {name}}}
  ports:
  - name: http
    port: 80
    targetPort: 8080
"""
DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: foo}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: nginx}]}
"""
POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  labels: {app: web}
spec:
  serviceAccountName: web
  nodeName: node1
  containers: [{name: web, image: nginx}]
status:
  podIP: 10.0.0.5
  podIPs: [{ip: 10.0.0.5}]
"""


def names(m: Manifests, kind: k.Kind) -> list[str]:
    return [f"{o['metadata'].get('namespace', '')}/{o['metadata']['name']}"
            for o in m.objects[kind]]


def test_directory_multi_document_files_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(SVC.format(name="api") + "---\n" + SVC.format(name="db"))
    (tmp_path / "a.yml").write_text(NS + "---\n---\n" + SVC.format(name="web"))  # empty doc
    (tmp_path / "c.json").write_text(
        '{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "j", "namespace": "foo"},'
        ' "spec": {"ports": [{"port": 81}]}}\n'
        '{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bar"}}\n')
    (tmp_path / "notes.txt").write_text("not: [a manifest")       # not a manifest name
    (tmp_path / ".a.yaml.swp").write_text("not: [a manifest")     # an editor's temporary
    (tmp_path / "sub").mkdir()                                    # not recursive (no -R)
    (tmp_path / "sub" / "x.yaml").write_text(SVC.format(name="nested"))
    m = load(tmp_path)
    assert m.errors == [] and m.warnings == []
    assert [p.name for p in m.files] == ["a.yml", "b.yaml", "c.json"]
    assert names(m, k.SERVICE) == ["foo/web", "foo/api", "foo/db", "foo/j"]
    assert names(m, k.NAMESPACE) == ["/foo", "/bar"]
    assert m.count() == 6


def test_a_single_file(tmp_path: Path) -> None:
    f = tmp_path / "mesh.txt"  # a file named on the command line is read whatever its name
    f.write_text(NS)
    assert names(load(f), k.NAMESPACE) == ["/foo"]


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    m = load(tmp_path / "nope")
    assert m.errors == [f"{tmp_path / 'nope'}: No such file or directory"]
    assert m.count() == 0


def test_list_kinds_are_expanded(tmp_path: Path) -> None:
    f = tmp_path / "l.yaml"
    f.write_text("""\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: foo}
- apiVersion: v1
  kind: List
  items:
  - {apiVersion: v1, kind: Namespace, metadata: {name: nested}}
---
apiVersion: v1
kind: ServiceList
items:
- metadata: {name: a, namespace: foo}
  spec: {ports: [{port: 80}]}
- metadata: {name: b, namespace: foo}
  spec: {ports: [{port: 81}]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthenticationList
items:
- metadata: {name: default, namespace: foo}
  spec: {mtls: {mode: STRICT}}
""")
    m = load(f)
    assert m.errors == []
    assert names(m, k.NAMESPACE) == ["/foo", "/nested"]
    assert names(m, k.SERVICE) == ["foo/a", "foo/b"]
    assert names(m, k.PEER_AUTHENTICATION) == ["foo/default"]


def test_default_namespace_is_written_into_metadata(tmp_path: Path) -> None:
    f = tmp_path / "x.yaml"
    f.write_text(POD + "---\n" + NS.replace("  name: foo\n", "  name: foo\n  namespace: x\n"))
    m = load(f)
    assert m.errors == []
    (pod,) = m.objects[k.POD]
    assert pod["metadata"]["namespace"] == "default"
    assert pod["metadata"]["labels"] == {"app": "web"}
    assert pod["status"]["podIP"] == "10.0.0.5"
    (ns,) = m.objects[k.NAMESPACE]
    assert "namespace" not in ns["metadata"]  # cluster-scoped: dropped


def test_unknown_kinds_are_ignored_and_counted(tmp_path: Path) -> None:
    f = tmp_path / "app.yaml"
    f.write_text(DEPLOYMENT + "---\n" + SVC.format(name="web") + "---\n" + DEPLOYMENT
                 + "---\napiVersion: serving.knative.dev/v1\nkind: Service\n"
                 "metadata: {name: kn}\n")
    m = load(f)
    assert m.errors == []
    assert names(m, k.SERVICE) == ["foo/web"]
    assert dict(m.ignored) == {"apps/v1, Kind=Deployment": 2,
                               "serving.knative.dev/v1, Kind=Service": 1}


def test_duplicates_last_in_name_order_wins_with_a_warning(tmp_path: Path) -> None:
    (tmp_path / "10-a.yaml").write_text(SVC.format(name="web"))
    (tmp_path / "20-b.yaml").write_text(SVC.format(name="web").replace("port: 80", "port: 90"))
    m = load(tmp_path)
    (svc,) = m.objects[k.SERVICE]
    assert svc["spec"]["ports"][0]["port"] == 90
    assert m.warnings == [
        f"Service foo/web: duplicate: {tmp_path / '10-a.yaml'}:1 and "
        f"{tmp_path / '20-b.yaml'}:1; the last one is used"]
    assert m.errors == []


def test_yaml_as_the_api_server_reads_it(tmp_path: Path) -> None:
    f = tmp_path / "x.yaml"
    f.write_text("""\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: p
  namespace: foo
  creationTimestamp: 2024-01-01T00:00:00Z
spec:
  selector: {matchLabels: {app: x}}
  portLevelMtls:
    8080: {mode: DISABLE}
""")
    m = load(f)
    assert m.errors == []
    (pa,) = m.objects[k.PEER_AUTHENTICATION]
    assert pa["metadata"]["creationTimestamp"] == "2024-01-01T00:00:00Z"  # not a datetime
    assert pa["spec"]["portLevelMtls"] == {"8080": {"mode": "DISABLE"}}  # a JSON key


def test_manifests_are_read_with_the_c_parser() -> None:
    """`make setup` installs PyYAML with libyaml; the pure-Python parser is ~3x slower and
    words its errors differently (the next test pins libyaml's words)."""
    assert yaml.__with_libyaml__


# libyaml's words (PyYAML's C parser, which manifests.py reads with).
@pytest.mark.parametrize(("text", "line", "reason"), [
    ("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: [foo\n", 5,
     "did not find expected ',' or ']'"),
    ("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a: b\n", 4,
     "mapping values are not allowed in this context"),
    ("apiVersion: v1\nkind: Namespace\n\tmetadata: {}\n", 3,
     "found a tab character that violates indentation"),
    # Two objects pasted without `---`: kubectl's strict decoder refuses the repeated key
    # (a plain YAML loader would keep the second object and drop the first unseen).
    ("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n"
     "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: y\n", 5,
     'mapping key "apiVersion" already defined at line 8'),
    ("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels:\n    a: '1'\n"
     "    a: '2'\n", 7, 'mapping key "a" already defined at line 13'),
])
def test_parse_errors_name_the_file_and_line(tmp_path: Path, text: str, line: int,
                                             reason: str) -> None:
    (tmp_path / "a.yaml").write_text(NS)
    bad = tmp_path / "b.yaml"
    bad.write_text(NS.replace("foo", "other") + "---\n" + text)
    m = load(tmp_path)
    assert m.errors == [f"{bad}:{line + 7}: {reason}"]  # NS and `---` take 7 lines
    assert names(m, k.NAMESPACE) == ["/foo"]  # a file that does not parse adds nothing


def test_json_parse_error_and_document_errors(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('{"apiVersion": "v1",\n "kind": "Namespace",\n "x": }\n')
    (tmp_path / "b.yaml").write_text(
        "- just a list\n---\nkind: Namespace\nmetadata: {name: x}\n---\n"
        "apiVersion: security.istio.io/v2\nkind: AuthorizationPolicy\nmetadata: {name: y}\n"
        "---\n" + NS)
    assert check_config(tmp_path) == [
        f"{tmp_path / 'a.json'}:3: Expecting value",
        f"{tmp_path / 'b.yaml'}:1: not an object: a list, want a mapping with apiVersion and "
        "kind",
        f"{tmp_path / 'b.yaml'}:3: apiVersion not set",
        f"{tmp_path / 'b.yaml'}:6: no matches for kind \"AuthorizationPolicy\" in version "
        "\"security.istio.io/v2\"",
    ]
    assert names(load(tmp_path), k.NAMESPACE) == ["/foo"]


def test_istio_documentation_examples_load_unchanged() -> None:
    per_file = {p.name: parse(p, p.read_bytes()) for p in sorted(DOCS.glob("*.yaml"))}
    for name, r in per_file.items():
        assert r.error == "" and r.doc_errors == [] and r.invalid == [], name
    kinds = {name: [f.kind.kind for f in r.objects] for name, r in per_file.items()}
    assert kinds == {
        "authorization-policy.yaml": ["AuthorizationPolicy"] * 3,
        "authz-ingress-deny.yaml": ["AuthorizationPolicy"],
        "peer-authentication.yaml": ["PeerAuthentication"] * 3,
        # the DestinationRule next to the entries is read too (traffic management)
        "service-entry.yaml": ["ServiceEntry", "ServiceEntry", "DestinationRule"],
        "workload-entry.yaml": ["WorkloadEntry"],
    }
    allow = per_file["authorization-policy.yaml"].objects[0].obj
    assert allow["spec"]["rules"][0]["from"] == [
        {"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}},
        {"source": {"namespaces": ["test"]}}]
    deny = per_file["authz-ingress-deny.yaml"].objects[0].obj
    assert deny["spec"]["action"] == "DENY"
    assert deny["spec"]["rules"][0]["from"][0]["source"]["ipBlocks"] == ["1.2.3.4"]
    assert per_file["peer-authentication.yaml"].objects[0].obj["spec"] == {
        "mtls": {"mode": "STRICT"}}

    m = load(DOCS)
    assert m.errors == []
    assert dict(m.ignored) == {}
    assert names(m, k.SERVICE_ENTRY) == ["default/external-svc-https",
                                         "default/external-svc-mongocluster"]
    assert names(m, k.WORKLOAD_ENTRY) == ["default/details-svc"]
    assert names(m, k.AUTHORIZATION_POLICY) == ["foo/httpbin", "istio-system/ingress-policy"]
    assert names(m, k.PEER_AUTHENTICATION) == ["foo/finance", "foo/default"]
    # Same names on the page: the last wins, as `kubectl apply` would leave it.
    assert m.objects[k.AUTHORIZATION_POLICY][0]["spec"]["rules"][0]["to"][0]["operation"][
        "ports"] == ["8080"]
    assert len(m.warnings) == 3
    assert check_config(DOCS) == []
