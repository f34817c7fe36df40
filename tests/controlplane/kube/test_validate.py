"""Objects are checked against the schemas the API server uses (Kubernetes' OpenAPI, Istio's
CRDs): one that fails is skipped with `Kind ns/name: field: reason`, counted and logged;
every other object is still served."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from controlplane.check import check_config
from controlplane.kube import objects as k
from controlplane.kube.manifests import ManifestWatcher, load
from controlplane.kube.validate import validate

GOOD_AP = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-sleep
  namespace: foo
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
"""
# (the object's YAML, the one line `check_config` gives for it)
INVALID = {
    "unknown-enum": ("""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad-action, namespace: foo}
spec:
  action: FOO
""", 'AuthorizationPolicy foo/bad-action: spec.action: Unsupported value: "FOO": '
     'supported values: "ALLOW", "DENY", "AUDIT", "CUSTOM"'),
    "wrong-type": ("""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad-type, namespace: foo}
spec:
  rules:
  - from:
    - source:
        principals: cluster.local/ns/default/sa/sleep
""", "AuthorizationPolicy foo/bad-type: spec.rules[0].from[0].source.principals: Invalid "
     'value: "cluster.local/ns/default/sa/sleep": must be of type array, not string'),
    "unknown-field": ("""\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: bad-field, namespace: foo}
spec:
  mtls: {mode: STRICT}
  mtlsMode: STRICT
""", "PeerAuthentication foo/bad-field: spec.mtlsMode: unknown field"),
    "required": ("""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: no-hosts}
spec:
  ports: [{number: 80, name: http}]
""", "ServiceEntry default/no-hosts: spec.hosts: Required value"),
    "int-or-string": ("""\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: foo}
spec:
  ports: [{port: 80, targetPort: [8080]}]
""", "Service foo/web: spec.ports[0].targetPort: Invalid value: [8080]: must be of type "
     "string or integer, not array"),
    "core-unknown-field": ("""\
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: foo}
spec:
  containers: [{name: c, image: nginx}]
  nodname: node1
""", "Pod foo/p: spec.nodname: unknown field"),
    "core-label-type": ("""\
apiVersion: v1
kind: Namespace
metadata:
  name: foo
  labels: {version: 1}
""", "Namespace foo: metadata.labels.version: Invalid value: 1: must be of type string, "
     "not integer"),
    "no-name": ("""\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: foo}
addressType: IPv4
endpoints: [{addresses: [10.0.0.1]}]
""", "EndpointSlice foo/: metadata.name: Required value"),
    "too-long": ("""\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm, namespace: foo}
spec:
  address: %s
""" % ("a" * 300), "WorkloadEntry foo/vm: spec.address: Too long: may not be more than 256 bytes"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_object_is_skipped_with_its_reason(tmp_path: Path, case: str) -> None:
    text, line = INVALID[case]
    (tmp_path / "a.yaml").write_text(GOOD_AP + "---\n" + text)
    m = load(tmp_path)
    assert m.errors == [line]
    assert [o["metadata"]["name"] for o in m.objects[k.AUTHORIZATION_POLICY]] == ["allow-sleep"]
    assert m.count() == 1  # the invalid one is not there; the rest is
    assert check_config(tmp_path) == [line]


def test_every_problem_of_an_object_in_field_order() -> None:
    obj = yaml.safe_load("""\
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: x, namespace: foo}
spec:
  action: FOO
  rules:
  - to: [{operation: {ports: [80]}}]
  - from: [{source: {ipBlocks: "1.2.3.4", bogus: 1}}]
""")
    assert [str(p) for p in validate(k.AUTHORIZATION_POLICY, obj)] == [
        'AuthorizationPolicy foo/x: spec.action: Unsupported value: "FOO": supported values: '
        '"ALLOW", "DENY", "AUDIT", "CUSTOM"',
        "AuthorizationPolicy foo/x: spec.rules[0].to[0].operation.ports[0]: Invalid value: 80: "
        "must be of type string, not integer",
        "AuthorizationPolicy foo/x: spec.rules[1].from[0].source.bogus: unknown field",
        'AuthorizationPolicy foo/x: spec.rules[1].from[0].source.ipBlocks: Invalid value: '
        '"1.2.3.4": must be of type array, not string',
    ]


def test_valid_objects_of_every_kind() -> None:
    docs: list[dict[str, Any]] = list(yaml.safe_load_all("""\
apiVersion: v1
kind: Node
metadata: {name: node1, labels: {topology.kubernetes.io/zone: z1}}
status: {addresses: [{type: InternalIP, address: 10.1.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: foo, labels: {app: web}}
spec: {serviceAccountName: web, nodeName: node1, containers: [{name: c, image: nginx}]}
status: {podIP: 10.0.0.5, podIPs: [{ip: 10.0.0.5}], phase: Running}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: foo}
spec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{name: http, port: 80,
       targetPort: http}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, namespace: foo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.0.0.5], conditions: {ready: true}, nodeName: node1}]
ports: [{name: http, port: 8080, protocol: TCP}]
---
apiVersion: v1
kind: Namespace
metadata: {name: foo, labels: {istio.io/dataplane-mode: ambient}}
"""))
    for d in docs:
        kind = k.kind_of(d)
        assert kind is not None
        assert validate(kind, d) == [], d["kind"]


def test_invalid_object_is_logged_and_counted(tmp_path: Path) -> None:
    text, _ = INVALID["unknown-enum"]
    (tmp_path / "a.yaml").write_text(GOOD_AP + "---\n" + text)
    sample = ("meshnode_controlplane_objects_invalid_total", {"kind": "AuthorizationPolicy"})
    before = REGISTRY.get_sample_value(*sample) or 0.0
    store = k.ObjectStore()
    with capture_logs() as logs:
        m = ManifestWatcher(tmp_path, store).load()
    assert REGISTRY.get_sample_value(*sample) == before + 1
    assert [o["metadata"]["name"] for o in store.list(k.AUTHORIZATION_POLICY)] == ["allow-sleep"]
    invalid = [e for e in logs if e["event"] == "object_invalid"]
    assert len(invalid) == 1
    assert {f: invalid[0][f] for f in ("kind", "namespace", "name", "field")} == {
        "kind": "AuthorizationPolicy", "namespace": "foo", "name": "bad-action",
        "field": "spec.action"}
    assert invalid[0]["log_level"] == "error"
    assert len(m.errors) == 1


def test_problems_sort_by_field_with_numeric_indices() -> None:
    ns = {"apiVersion": "v1", "kind": "Namespace",
          "metadata": {"name": "x", "labels": {"10": 1, "a": 2, "2": 3}}}
    assert [p.field for p in validate(k.NAMESPACE, ns)] == [
        "metadata.labels.a", "metadata.labels[2]", "metadata.labels[10]"]
