"""deploy/controlplane-rbac.yaml grants the control plane exactly what its API-server source
calls: `controlplane/kube/informer.py` `CALLS` (list and watch of every kind it reads, and
the CA's token checks: create tokenreviews, get pods).

The table is what the code does, not a list kept by hand: it is built from `KINDS` and
`tokenreview.CALLS`, the requests are checked against it at run time (test_informer.py,
test_every_request_is_a_declared_call; test_tokenreview.py,
test_the_requests_are_the_declared_calls), and below nothing else in controlplane/ reaches
the API server (no client library import; only the informer and the token reviewer use
core/k8s).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import yaml

from controlplane.kube import tokenreview
from controlplane.kube.informer import CALLS
from controlplane.kube.objects import KINDS

REPO = Path(__file__).resolve().parents[3]
RBAC = REPO / "deploy" / "controlplane-rbac.yaml"
DEPLOYMENT = REPO / "deploy" / "controlplane.yaml"
INFORMER = REPO / "controlplane" / "kube" / "informer.py"
TOKENREVIEW = REPO / "controlplane" / "kube" / "tokenreview.py"

Grant = tuple[str, str, str]  # (api group, resource, verb)


def needed() -> set[Grant]:
    return {(c.group, c.resource, c.verb) for calls in CALLS.values() for c in calls}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]


def service_account() -> tuple[str, str]:
    [dep] = [d for d in _docs(DEPLOYMENT) if d.get("kind") == "Deployment"]
    sa = dep["spec"]["template"]["spec"]["serviceAccountName"]
    return str(sa), str(dep["metadata"]["namespace"])


def granted() -> set[Grant]:
    """Every (group, resource, verb) the ClusterRoles bound to the control plane's
    ServiceAccount grant; rules narrowed by resourceNames do not count (a list/watch of a
    collection cannot use them), nor do other rule forms."""
    docs = _docs(RBAC)
    name, ns = service_account()
    roles = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ClusterRole"}
    bound = {b["roleRef"]["name"] for b in docs if b.get("kind") == "ClusterRoleBinding"
             and {"kind": "ServiceAccount", "name": name, "namespace": ns}
             in (b.get("subjects") or [])}
    assert bound, f"no ClusterRoleBinding for ServiceAccount {ns}/{name} in {RBAC.name}"
    assert bound <= set(roles), f"bindings refer to ClusterRoles not in {RBAC.name}"
    out: set[Grant] = set()
    for role in sorted(bound):
        for rule in roles[role].get("rules") or []:
            assert set(rule) <= {"apiGroups", "resources", "verbs"}, \
                f"unexpected rule form (resourceNames, nonResourceURLs?): {rule}"
            out |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"]
                    for v in rule["verbs"]}
    return out


def test_the_table_is_list_and_watch_of_every_kind_and_the_token_checks() -> None:
    assert set(CALLS) == {k.kind for k in KINDS} | {"TokenReview"}
    assert needed() == {(k.group, k.plural, v) for k in KINDS for v in ("list", "watch")} | {
        ("authentication.k8s.io", "tokenreviews", "create"), ("", "pods", "get")}
    assert CALLS["TokenReview"] == tokenreview.CALLS
    assert ("security.istio.io", "authorizationpolicies", "watch") in needed()


def test_the_role_grants_exactly_the_table() -> None:
    got = granted()
    assert sorted(needed() - got) == [], "deploy/controlplane-rbac.yaml lacks these"
    assert sorted(got - needed()) == [], "deploy/controlplane-rbac.yaml grants more than used"
    assert not any("*" in g for g in got)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_only_the_informer_and_the_token_reviewer_reach_the_api_server() -> None:
    sources = sorted((REPO / "controlplane").rglob("*.py"))
    assert INFORMER in sources and TOKENREVIEW in sources
    client_libs = {p.relative_to(REPO).as_posix(): n for p in sources for n in _imports(p)
                   if n.split(".")[0] in ("kubernetes", "kubernetes_asyncio")}
    assert client_libs == {}, "use core/k8s through controlplane/kube/informer.py"
    core_k8s = {p.relative_to(REPO).as_posix() for p in sources
                if any(n == "core.k8s" or n.startswith("core.k8s.") for n in _imports(p))}
    assert core_k8s == {"controlplane/kube/informer.py", "controlplane/kube/tokenreview.py"}
