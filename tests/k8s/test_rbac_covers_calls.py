"""deploy/rbac.yaml grants the agent exactly what its code calls.

The calls come from the code, not from a list kept by hand: every Kubernetes API call goes
through `agent/k8s/api.py:KubeApi`, whose methods are declared with their (verb, group,
resource) in `CALLS`; the tests below check that this is so (no other module imports the
client; every KubeApi method that reaches the client is declared), then compare `CALLS`
with the ClusterRole bound to the agent's ServiceAccount.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.k8s.api import CALLS, KubeApi

REPO = Path(__file__).resolve().parents[2]
RBAC = REPO / "deploy" / "rbac.yaml"
CLIENT_MODULES = ("kubernetes", "kubernetes_asyncio")
API_MODULE = REPO / "agent" / "k8s" / "api.py"
CLIENT_ATTRS = ("_core", "_apps")  # KubeApi's typed API objects (CoreV1Api, AppsV1Api)

Grant = tuple[str, str, str]  # (api group, resource, verb)


def needed() -> set[Grant]:
    return {(c.group, c.resource, c.verb) for calls in CALLS.values() for c in calls}


def test_only_the_api_module_imports_the_kubernetes_client() -> None:
    offenders = []
    for path in sorted((REPO / "agent").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            if any(n.split(".")[0] in CLIENT_MODULES for n in names) and path != API_MODULE:
                offenders.append(f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}")
    assert offenders == [], "call the API through agent/k8s/api.py only"


def test_every_kubeapi_method_that_calls_the_client_is_declared() -> None:
    tree = ast.parse(API_MODULE.read_text())
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "KubeApi"]
    reaching = set()
    for fn in cls.body:
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(fn):
                if isinstance(node, ast.Attribute) and node.attr in CLIENT_ATTRS and \
                        isinstance(node.value, ast.Name) and node.value.id == "self" and \
                        fn.name != "__init__":
                    reaching.add(fn.name)
    assert reaching, "the AST walk found no client call at all: the check is broken"
    assert reaching == set(CALLS), f"undeclared: {reaching - set(CALLS)}, " \
                                   f"declared but unused: {set(CALLS) - reaching}"
    assert all(hasattr(KubeApi, name) for name in CALLS)
    assert needed() == {("", "pods", "list"), ("", "pods", "watch"), ("", "pods", "patch"),
                        ("", "namespaces", "list"), ("", "namespaces", "watch"),
                        ("", "nodes", "get"), ("", "nodes", "patch"),
                        ("apps", "daemonsets", "get")}


def _docs() -> list[dict[str, Any]]:
    if not RBAC.exists():
        pytest.fail(f"{RBAC.relative_to(REPO)} does not exist: the agent's RBAC is missing")
    return [d for d in yaml.safe_load_all(RBAC.read_text()) if isinstance(d, dict)]


def _agent_service_accounts() -> set[str]:
    """The DaemonSet's serviceAccountName where deploy/ has the DaemonSet; else every
    ServiceAccount whose name says it is the agent's."""
    names = set()
    for path in sorted((REPO / "deploy").glob("*.y*ml")):
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError:
            continue
        for d in docs:
            if isinstance(d, dict) and d.get("kind") == "DaemonSet":
                sa = ((d.get("spec") or {}).get("template") or {}).get("spec", {}).get(
                    "serviceAccountName")
                if sa:
                    names.add(str(sa))
    return names


def agent_rules() -> list[dict[str, Any]]:
    docs = _docs()
    roles = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ClusterRole"}
    sas = _agent_service_accounts()
    bound: set[str] = set()
    for b in (d for d in docs if d.get("kind") == "ClusterRoleBinding"):
        for s in b.get("subjects") or []:
            if s.get("kind") != "ServiceAccount":
                continue
            if s.get("name") in sas or (not sas and "agent" in str(s.get("name"))):
                bound.add(b["roleRef"]["name"])
    if not bound and len(roles) == 1:
        bound = set(roles)
    assert bound, f"no ClusterRole bound to the agent's ServiceAccount {sas or '(*agent*)'}"
    missing = bound - set(roles)
    assert not missing, f"bindings refer to ClusterRoles not in rbac.yaml: {missing}"
    rules = [r for name in sorted(bound) for r in roles[name].get("rules") or []]
    # Namespaced Roles (the agent's own DaemonSet, in its own namespace), bound by a
    # RoleBinding in that namespace.
    ns_roles = {(d["metadata"].get("namespace"), d["metadata"]["name"]): d
                for d in docs if d.get("kind") == "Role"}
    for b in (d for d in docs if d.get("kind") == "RoleBinding"):
        if any(s.get("kind") == "ServiceAccount" and s.get("name") in sas
               for s in b.get("subjects") or []):
            key = (b["metadata"].get("namespace"), b["roleRef"]["name"])
            assert b["roleRef"]["kind"] == "Role" and key in ns_roles, \
                f"RoleBinding {b['metadata']['name']} refers to a Role not in rbac.yaml"
            rules += ns_roles[key].get("rules") or []
    return rules


def _daemonset_names() -> set[str]:
    """The names the agent asks for with get_daemonset: its own DaemonSet's name, as the
    pod template's MESHNODE_DAEMONSET says (agent/k8s/owner.py)."""
    names = set()
    for path in sorted((REPO / "deploy").glob("*.y*ml")):
        for d in yaml.safe_load_all(path.read_text()):
            if isinstance(d, dict) and d.get("kind") == "DaemonSet":
                for c in d["spec"]["template"]["spec"]["containers"]:
                    for e in c.get("env") or []:
                        if e.get("name") == "MESHNODE_DAEMONSET":
                            names.add(str(e["value"]))
    return names


def grants(rules: list[dict[str, Any]]) -> list[tuple[set[str], set[str], set[str], bool]]:
    return [(set(r.get("apiGroups") or []), set(r.get("resources") or []),
             set(r.get("verbs") or []), _named(r))
            for r in rules]


def _named(rule: dict[str, Any]) -> bool:
    """A rule narrowed by resourceNames. The one name known before run time is the agent's
    own DaemonSet, so a `get daemonsets` rule naming exactly it counts as unnamed here."""
    names = set(rule.get("resourceNames") or [])
    if names and set(rule.get("resources") or []) == {"daemonsets"} and \
            set(rule.get("verbs") or []) == {"get"}:
        own = _daemonset_names()
        assert own, "deploy/daemonset.yaml sets no MESHNODE_DAEMONSET"
        return not names >= own
    return bool(names)


def allowed(rules: list[dict[str, Any]], want: Grant) -> bool:
    group, resource, verb = want
    for groups, resources, verbs, named in grants(rules):
        # resourceNames cannot apply to list/watch of a collection; our node name is only
        # known at run time, so a named rule never covers a call here.
        if named:
            continue
        if (group in groups or "*" in groups) and (resource in resources or "*" in resources) \
                and (verb in verbs or "*" in verbs):
            return True
    return False


def test_rbac_grants_every_call_the_agent_makes() -> None:
    rules = agent_rules()
    missing = sorted(g for g in needed() if not allowed(rules, g))
    assert missing == [], f"deploy/rbac.yaml lacks (group, resource, verb): {missing}"


def test_rbac_grants_nothing_beyond_what_the_code_calls() -> None:
    extra = []
    for groups, resources, verbs, _named in grants(agent_rules()):
        for g in groups:
            for r in resources:
                for v in verbs:
                    if (g, r, v) not in needed():
                        extra.append((g, r, v))
    assert extra == [], f"deploy/rbac.yaml grants the agent more than it calls: {sorted(extra)}"
