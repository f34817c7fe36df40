"""Objects of the custom resources the chart makes (the Prometheus Operator's PodMonitor),
checked against their CRD's openAPIV3Schema as the API server reads a structural schema: an
object node that declares its properties takes no others (unless it says
x-kubernetes-preserve-unknown-fields), and `metadata` is Kubernetes' ObjectMeta. Not checked:
the CRD's CEL rules (x-kubernetes-validations)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import yaml
from referencing import Registry, Resource

from tests.deploy.manifests import REPO

CRDS = {"PodMonitor": REPO / "tests" / "vectors" / "prometheus-operator"
        / "monitoring.coreos.com_podmonitors.yaml"}
DEFINITIONS_ID = "https://kubernetes.io/api/_definitions.json"
OBJECT_META = f"{DEFINITIONS_ID}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"

Obj = dict[str, Any]


def structural(node: Obj) -> Obj:
    out = dict(node)
    if "properties" in node:
        out["properties"] = {k: structural(v) for k, v in node["properties"].items()}
        if ("additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
    if isinstance(node.get("items"), dict):
        out["items"] = structural(node["items"])
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = structural(node["additionalProperties"])
    return out


@cache
def _registry() -> Registry[Any]:
    version = kubernetes_validate.latest_version()
    path = (resources.files("kubernetes_validate") / "kubernetes-json-schema"
            / f"v{version}-local-strict" / "_definitions.json")
    return Resource.from_contents(json.loads(path.read_text())) @ Registry()


@cache
def validator(kind: str) -> Any:
    (crd,) = [d for d in yaml.safe_load_all(CRDS[kind].read_text()) if d]
    assert crd["spec"]["names"]["kind"] == kind
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    body = structural(version["schema"]["openAPIV3Schema"])
    body["properties"] = {**body.get("properties", {}), "apiVersion": {"enum": [
        f"{crd['spec']['group']}/v1"]}, "kind": {"enum": [kind]}, "metadata": {"$ref": OBJECT_META}}
    body["required"] = sorted({*body.get("required", []), "apiVersion", "kind", "metadata"})
    body["$schema"] = jsonschema.Draft202012Validator.META_SCHEMA["$id"]
    return jsonschema.Draft202012Validator(body, registry=_registry())


def problems(obj: Obj) -> list[str]:
    """`path: message` of every schema failure of `obj` (a kind of CRDS); [] if valid."""
    return [f"{'/'.join(map(str, e.absolute_path)) or '<object>'}: {e.message}"
            for e in validator(obj["kind"]).iter_errors(obj)]
