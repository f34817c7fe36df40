"""controlplane/kube/tokenreview.py: what a TokenReview answer must say for a token to be
accepted, and the reviewer against the fake API server (its requests are the declared calls,
the RBAC table's)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from controlplane.kube import tokenreview
from controlplane.kube.tokenreview import (
    ReviewUnavailable,
    ServiceAccountUser,
    TokenRejected,
    TokenReviewer,
    parse_review,
)
from core.k8s.client import KubeClient
from testing.fakeapi import FakeApi, sa_user
from tests.controlplane.harness import run

GOOD: dict[str, Any] = {
    "kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
    "status": {"authenticated": True, "audiences": ["istio-ca"],
               "user": sa_user("meshnode-system", "meshnode-node", pod_name="agent-x",
                               pod_uid="u1", node_name="node1")}}


def with_status(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(GOOD)
    out["status"].update(changes)
    return out


def test_a_good_answer_names_the_account_its_pod_and_node() -> None:
    assert parse_review(GOOD) == ServiceAccountUser("meshnode-system", "meshnode-node",
                                                    pod_name="agent-x", pod_uid="u1",
                                                    node_name="node1")
    # Before Kubernetes 1.30: no node in the token.
    older = copy.deepcopy(GOOD)
    del older["status"]["user"]["extra"]["authentication.kubernetes.io/node-name"]
    assert parse_review(older).node_name == ""


@pytest.mark.parametrize(("answer", "words"), [
    (with_status(authenticated=False), "not authenticated"),
    (with_status(authenticated=False, error="[invalid bearer token]"), "invalid bearer token"),
    (with_status(error="boom"), "boom"),   # an error wins even if authenticated says true
    (with_status(audiences=["https://kubernetes.default.svc.cluster.local"]), "audiences"),
    (with_status(audiences=None), "audiences"),   # a server that did not check the audience
    (with_status(user={"username": "alice", "groups": ["system:authenticated"]}),
     "not a service account"),
    (with_status(user={"username": "system:serviceaccount:ns:sa",
                       "groups": ["system:authenticated"]}), "not a service account"),
    (with_status(user={"username": "system:serviceaccount:ns", "groups": [
        "system:serviceaccounts"]}), "system:serviceaccount:<namespace>:<name>"),
    (with_status(user=None), "no user"),
])
def test_what_is_not_a_good_answer(answer: dict[str, Any], words: str) -> None:
    with pytest.raises(TokenRejected, match=words):
        parse_review(answer)


@pytest.mark.parametrize("answer", [None, [], {"kind": "Status"}, {"status": "Failure"}])
def test_not_a_token_review_is_unavailable_not_rejected(answer: Any) -> None:
    with pytest.raises(ReviewUnavailable):
        parse_review(answer)


def test_the_requests_are_the_declared_calls(tmp_path: Path) -> None:
    """Create a TokenReview with audience istio-ca, get a pod: exactly CALLS, with the
    control plane's own credentials (the kubeconfig's), and what comes back."""
    async def main() -> None:
        api = FakeApi()
        api.put("pods", {"metadata": {"name": "agent-x", "namespace": "meshnode-system",
                                      "uid": "u1"}, "spec": {"nodeName": "node1"}})
        api.add_token("tok", sa_user("meshnode-system", "meshnode-node", "agent-x", "u1"))
        await api.start()
        client = await KubeClient.connect(api.kubeconfig(tmp_path / "kc"))
        try:
            r = TokenReviewer(client)
            user = await r.review("tok")
            assert (user.namespace, user.service_account, user.pod_name, user.pod_uid,
                    user.node_name) == ("meshnode-system", "meshnode-node", "agent-x", "u1", "")
            with pytest.raises(TokenRejected, match="invalid bearer token"):
                await r.review("other")
            pod = await r.pod("meshnode-system", "agent-x")
            assert pod is not None and pod["spec"]["nodeName"] == "node1"
            assert await r.pod("meshnode-system", "nope") is None
            made = set()
            for method, path, _q in api.requests:
                if (method, path) == ("POST", tokenreview.PATH):
                    made.add(("create", "authentication.k8s.io", "tokenreviews"))
                else:
                    assert method == "GET" and path.startswith(
                        "/api/v1/namespaces/meshnode-system/pods/"), (method, path)
                    made.add(("get", "", "pods"))
            assert made == {(c.verb, c.group, c.resource) for c in tokenreview.CALLS}
            assert set(api.auth) == {"Bearer test-token"}
            # The server down: unavailable, not rejected, not a crash.
            await api.stop()
            with pytest.raises(ReviewUnavailable):
                await r.review("tok")
            with pytest.raises(ReviewUnavailable):
                await r.pod("meshnode-system", "agent-x")
        finally:
            await client.close()
            await api.stop()
    run(main())


def test_the_fake_api_answers_audiences_as_the_api_server_does(tmp_path: Path) -> None:
    """No audiences asked: the API server's own; asked ones: only those the token has."""
    async def main() -> None:
        api = FakeApi()
        api.add_token("tok", sa_user("ns", "sa"), audiences=["istio-ca", "other"])
        await api.start()
        client = await KubeClient.connect(api.kubeconfig(tmp_path / "kc"))
        try:
            r = TokenReviewer(client, audiences=["other", "nope"])
            assert (await r.review("tok")).service_account == "sa"
            with pytest.raises(TokenRejected, match="audiences"):
                await TokenReviewer(client, audiences=["nope"]).review("tok")
        finally:
            await client.close()
            await api.stop()
    run(main())
