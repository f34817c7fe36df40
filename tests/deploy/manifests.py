"""Loading the plain manifests (deploy/*.yaml) and rendering the Helm chart, for the tests."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHART = DEPLOY / "helm" / "meshnode"
NAMESPACE = "meshnode-system"

Obj = dict[str, Any]


def plain_files() -> list[Path]:
    """What `kubectl apply -f deploy/` reads: *.yaml/*.yml/*.json directly in deploy/."""
    return sorted(p for p in DEPLOY.iterdir()
                  if p.is_file() and p.suffix in (".yaml", ".yml", ".json"))


@cache
def _plain() -> tuple[tuple[str, Obj], ...]:
    out: list[tuple[str, Obj]] = []
    for path in plain_files():
        out.extend((path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return tuple(out)


def plain() -> list[tuple[str, Obj]]:
    """(file name, object) for every object in the plain manifests (deep copies)."""
    return [(name, copy.deepcopy(doc)) for name, doc in _plain()]


NOTES = "meshnode/templates/NOTES.txt"


def render_files(values: dict[str, Any] | None = None,
                 namespace: str = NAMESPACE) -> dict[str, str]:
    """The chart rendered by Helm's own Go SDK (helm-python-sdk binds libhelm), as Helm does
    for `helm install`: the values checked against values.schema.json first (HelmValuesError
    names the value), then template path -> rendered text, NOTES.txt included."""
    import helm_python as helm

    with helm.Chart.load(CHART) as chart:
        out: dict[str, str] = chart.render(values or {}, name="meshnode", namespace=namespace,
                                           is_install=True)
    return out


def render(values: dict[str, Any] | None = None, namespace: str = NAMESPACE) -> list[Obj]:
    """The objects of the rendered chart (render_files without NOTES.txt)."""
    out = render_files(values, namespace)
    return [doc for path, text in sorted(out.items()) if path != NOTES
            for doc in yaml.safe_load_all(text) if doc]


def notes(values: dict[str, Any] | None = None) -> str:
    """What `helm install` prints after the install (templates/NOTES.txt, rendered)."""
    return render_files(values)[NOTES]


def find(objs: list[Obj], kind: str, name: str) -> Obj:
    hits = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} objects"
    return hits[0]


def pod_specs(objs: list[Obj]) -> list[tuple[str, Obj]]:
    """(workload name, pod spec) of every DaemonSet and Deployment."""
    return [(o["metadata"]["name"], o["spec"]["template"]["spec"]) for o in objs
            if o["kind"] in ("DaemonSet", "Deployment")]


def container(spec: Obj, name: str) -> Obj:
    (c,) = [c for c in spec["containers"] if c["name"] == name]
    found: Obj = c
    return found


def config_file(objs: list[Obj], key: str) -> Obj:
    """A file of the meshnode-config ConfigMap, parsed."""
    data: Obj = yaml.safe_load(find(objs, "ConfigMap", "meshnode-config")["data"][key])
    return data
