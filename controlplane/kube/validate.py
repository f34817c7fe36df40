"""Objects checked against the schemas the API server would check them with.

- Kubernetes' own kinds (Namespace, Node, Pod, Service, EndpointSlice): Kubernetes' OpenAPI,
  as `kubernetes-validate` ships it offline (JSON Schema, the "strict" variant: an unknown
  field is an error, as `kubectl apply` reports it with its default `--validate=strict`).
- Istio's kinds: the `openAPIV3Schema` of Istio's CRDs (schemas/istio-crds.yaml, copied from
  istio/istio), read as the API server reads a structural schema: a field the schema does not
  declare is an error unless the node says `x-kubernetes-preserve-unknown-fields`, and
  `metadata` is Kubernetes' ObjectMeta.

Not checked: the CEL rules of the CRDs (`x-kubernetes-validations`, e.g. "port must be
between 1-65535"), and what the API server checks in code rather than in its schema (name
syntax, immutable fields). The conversion checks what it relies on.

A problem reads `Kind ns/name: field.path: reason`, the reason worded as the API server
words it (`Unsupported value: "FOO": supported values: "ALLOW", ...`, `Required value`,
`unknown field`).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource

from controlplane.kube.objects import KINDS, Kind, Obj, key_of, ref

ISTIO_CRDS = Path(__file__).parent / "schemas" / "istio-crds.yaml"
DEFINITIONS_ID = "https://kubernetes.io/api/_definitions.json"
OBJECT_META = f"{DEFINITIONS_ID}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
_VALUE_MAX = 60  # characters of a value quoted in a reason


@dataclass(frozen=True, slots=True)
class Problem:
    """One schema failure of one object."""

    kind: str
    namespace: str
    name: str
    ref: str      # `Kind ns/name`
    field: str    # `spec.rules[0].from`; "" for the object as a whole
    reason: str

    def __str__(self) -> str:
        return f"{self.ref}: {self.field or '<object>'}: {self.reason}"


def validate(kind: Kind, obj: Obj) -> list[Problem]:
    """Every schema failure of `obj` (a `kind` object), in field order; [] if it is valid."""
    ns, name = key_of(obj)
    found: dict[tuple[str, str], None] = {}  # ordered set of (field, reason)
    if not name:
        found[("metadata.name", "Required value")] = None
    for err in _validator(kind.kind).iter_errors(obj):
        for field, reason in _explain(err):
            found[(field, reason)] = None
    at = ref(kind, obj)
    return [Problem(kind.kind, ns, name, at, f, r) for f, r in sorted(found, key=_order)]


def _order(item: tuple[str, str]) -> tuple[list[tuple[int, str]], str]:
    # Field order with list indices compared as numbers: rules[2] before rules[10].
    return ([(int(p), "") if p.isdigit() else (-1, p)
             for p in re.split(r"[.\[\]]+", item[0]) if p], item[1])


# ---- the schemas ----------------------------------------------------------------------


def kubernetes_version() -> str:
    """The Kubernetes release whose OpenAPI the core kinds are checked against."""
    import kubernetes_validate  # type: ignore[import-untyped]

    return str(kubernetes_validate.latest_version())


def _schema_dir() -> Any:
    return (resources.files("kubernetes_validate") / "kubernetes-json-schema"
            / f"v{kubernetes_version()}-local-strict")


@functools.cache
def _registry() -> Registry[Any]:
    defs = json.loads((_schema_dir() / "_definitions.json").read_text())
    return Resource.from_contents(defs) @ Registry()


@functools.cache
def _validator(kind: str) -> jsonschema.protocols.Validator:
    schema = _istio_schemas().get(kind)
    if schema is None:
        k = next(k for k in KINDS if k.kind == kind)
        group = k.group.split(".", 1)[0]
        name = f"{kind.lower()}-{group}-{k.version}" if group else f"{kind.lower()}-{k.version}"
        schema = json.loads((_schema_dir() / f"{name}.json").read_text())
    cls = jsonschema.validators.Draft202012Validator
    return cls(schema, registry=_registry())


@functools.cache
def _istio_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schemas of the Istio kinds, from their CRDs' v1 openAPIV3Schema."""
    out: dict[str, dict[str, Any]] = {}
    for crd in yaml.safe_load_all(ISTIO_CRDS.read_text()):
        if not crd:
            continue
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        body = _structural(version["schema"]["openAPIV3Schema"])
        body["properties"] = {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"$ref": OBJECT_META},
            **body.get("properties", {}),
        }
        body["$schema"] = jsonschema.Draft202012Validator.META_SCHEMA["$id"]
        out[crd["spec"]["names"]["kind"]] = body
    return out


def _structural(node: dict[str, Any]) -> dict[str, Any]:
    """A CRD schema node with the API server's unknown-field rule made explicit: an object
    node that declares its properties (and not `x-kubernetes-preserve-unknown-fields`)
    takes no others. Only the structural skeleton (properties, items, additionalProperties)
    is walked: anyOf/oneOf/not only constrain values there."""
    out = dict(node)
    if "properties" in node:
        out["properties"] = {k: _structural(v) for k, v in node["properties"].items()}
        if ("additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
    if isinstance(node.get("items"), dict):
        out["items"] = _structural(node["items"])
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = _structural(node["additionalProperties"])
    return out


# ---- reasons --------------------------------------------------------------------------


def _field(path: Any) -> str:
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        elif re.fullmatch(r"[A-Za-z_$][A-Za-z0-9_$-]*", str(p)):
            out += f".{p}" if out else str(p)
        else:
            out += f"[{p}]"
    return out


def _value(v: Any) -> str:
    text = json.dumps(v, default=str, separators=(", ", ": "))
    return text if len(text) <= _VALUE_MAX else text[:_VALUE_MAX - 3] + "..."


def _types(t: Any) -> list[str]:
    return [x for x in ([t] if isinstance(t, str) else list(t)) if x != "null"]


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    return "array" if isinstance(v, list) else "object"


def _explain(err: jsonschema.ValidationError) -> list[tuple[str, str]]:
    """(field, reason) pairs for one jsonschema error, worded as the API server words them."""
    path = list(err.absolute_path)
    v = err.validator
    want: Any = err.validator_value
    inst: Any = err.instance
    schema: Any = err.schema
    if v == "required":
        return [(_field([*path, r]), "Required value")
                for r in want if isinstance(inst, dict) and r not in inst]
    if v in ("additionalProperties", "unevaluatedProperties"):
        known = schema.get("properties", {}) if isinstance(schema, dict) else {}
        extra = [k for k in inst if k not in known] if isinstance(inst, dict) else []
        return [(_field([*path, k]), "unknown field") for k in extra]
    field = _field(path)
    if v == "type":
        return [(field, f"Invalid value: {_value(inst)}: must be of type "
                        f"{' or '.join(_types(want))}, not {_json_type(inst)}")]
    if v == "enum":
        supported = ", ".join(_value(x) for x in want if x is not None)
        return [(field, f"Unsupported value: {_value(inst)}: supported values: {supported}")]
    if v in ("anyOf", "oneOf") and err.context:
        # int-or-string and the like: every branch only a type.
        if all(e.validator == "type" and not e.relative_path for e in err.context):
            types = [t for e in err.context for t in _types(e.validator_value)]
            return [(field, f"Invalid value: {_value(inst)}: must be of type "
                            f"{' or '.join(dict.fromkeys(types))}, not {_json_type(inst)}")]
        best = jsonschema.exceptions.best_match(err.context)
        if best is not None:
            return _explain(best)
    reasons = {
        "maxLength": f"Too long: may not be more than {want} bytes",
        "minLength": f"Invalid value: {_value(inst)}: should be at least {want} chars long",
        "maxItems": f"Too many: {len(inst) if isinstance(inst, list) else '?'}: "
                    f"must have at most {want} items",
        "minItems": f"Invalid value: {_value(inst)}: should have at least {want} items",
        "maxProperties": f"Too many: must have at most {want} items",
        "minProperties": f"Invalid value: should have at least {want} properties",
        "maximum": f"Invalid value: {_value(inst)}: should be less than or equal to {want}",
        "minimum": f"Invalid value: {_value(inst)}: should be greater than or equal to {want}",
        "pattern": f"Invalid value: {_value(inst)}: should match '{want}'",
    }
    return [(field, reasons.get(str(v), f"Invalid value: {_value(inst)}: {err.message}"))]
