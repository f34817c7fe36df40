"""Kubernetes service-account tokens, checked by the API server: the CA's and ADS's second
way of knowing who calls (controlplane/auth.py), used when the control plane reads an API
server (`--kubeconfig`, or in-cluster).

A caller sends a projected service-account token whose audience is `istio-ca` (what ztunnel
and istio-agent send to istiod). We do not verify JWTs ourselves: the API server does, through
the TokenReview API (POST /apis/authentication.k8s.io/v1/tokenreviews with `spec.token` and
`spec.audiences: [istio-ca]`). The answer, when the token is good:

    status.authenticated: true
    status.audiences:     [istio-ca]            (the asked audiences the token carries)
    status.user.username: system:serviceaccount:<namespace>:<service account>
    status.user.groups:   [system:serviceaccounts, system:serviceaccounts:<ns>, ...]
    status.user.extra:    authentication.kubernetes.io/pod-name, .../pod-uid  (a pod-bound
                          token: every projected token), .../node-name, .../node-uid
                          (Kubernetes >= 1.30, ServiceAccountTokenPodNodeInfo)

A token is accepted only if all of these hold (istiod checks the same, plus the audience
it asked for). Its bound pod tells where the caller runs: from `node-name` when the API server
puts it in the token, else from the pod itself (`get` of the bound pod, whose uid must be the
token's: a pod re-created under the same name is another pod).

The API calls are `CALLS` (create tokenreviews, get pods); controlplane/kube/informer.py adds
them to the control plane's RBAC table. Nothing here is cached: each check asks the API
server, so a deleted pod's token stops working at once; and a check that cannot be made
(API server down, refused, a garbled answer) is a refusal, never a pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from core.k8s.client import ApiCall, ApiError, KubeClient, read_json

AUDIENCE = "istio-ca"   # istiod's: ztunnel's and istio-agent's projected tokens carry it
PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"
NODE_NAME = "authentication.kubernetes.io/node-name"
SA_GROUP = "system:serviceaccounts"
SA_PREFIX = "system:serviceaccount:"

# What a call can fail with: an error status or transport failure (ApiError), and a body
# cut off while it was being read.
_FAILURES = (ApiError, aiohttp.ClientError, OSError, TimeoutError)

CALLS: tuple[ApiCall, ...] = (ApiCall("create", "authentication.k8s.io", "tokenreviews"),
                              ApiCall("get", "", "pods"))


class TokenRejected(Exception):
    """The API server looked at the token and does not vouch for it (invalid, expired, wrong
    audience, its pod gone, not a service account's): the caller is not authenticated."""


class ReviewUnavailable(Exception):
    """The token could not be checked (API server unreachable, an error status, an answer
    that is not a TokenReview): refuse, and let the caller retry."""


@dataclass(frozen=True)
class ServiceAccountUser:
    """Who a good token belongs to."""

    namespace: str
    service_account: str
    pod_name: str = ""      # "" for a token not bound to a pod
    pod_uid: str = ""
    node_name: str = ""     # from the token itself (Kubernetes >= 1.30), else ""

    def __str__(self) -> str:
        return f"{self.namespace}/{self.service_account}"


def _extra(user: dict[str, Any], key: str) -> str:
    extra = user.get("extra")
    values = extra.get(key) if isinstance(extra, dict) else None
    if isinstance(values, list) and len(values) == 1 and isinstance(values[0], str):
        return values[0]
    return ""


def parse_review(review: Any, audiences: Sequence[str] = (AUDIENCE,)) -> ServiceAccountUser:
    """The service account of a TokenReview answer; TokenRejected when it is not a good one,
    ReviewUnavailable when it is not a TokenReview at all."""
    if not isinstance(review, dict) or not isinstance(review.get("status"), dict):
        raise ReviewUnavailable("the TokenReview answer has no status")
    status: dict[str, Any] = review["status"]
    if status.get("error") or status.get("authenticated") is not True:
        raise TokenRejected(str(status.get("error") or "the token is not authenticated"))
    got = status.get("audiences")
    if not isinstance(got, list) or not set(audiences) & set(got):
        raise TokenRejected(f"the token's audiences {got} are not {list(audiences)}")
    user = status.get("user")
    if not isinstance(user, dict):
        raise TokenRejected("the TokenReview names no user")
    groups = user.get("groups")
    username = str(user.get("username") or "")
    if not isinstance(groups, list) or SA_GROUP not in groups or \
            not username.startswith(SA_PREFIX):
        raise TokenRejected(f"{username or 'the user'} is not a service account")
    parts = username.split(":")
    if len(parts) != 4 or not parts[2] or not parts[3]:
        raise TokenRejected(f"{username!r} is not system:serviceaccount:<namespace>:<name>")
    return ServiceAccountUser(namespace=parts[2], service_account=parts[3],
                              pod_name=_extra(user, POD_NAME), pod_uid=_extra(user, POD_UID),
                              node_name=_extra(user, NODE_NAME))


class TokenReviewer:
    """Reviews tokens and reads their bound pods through one API server connection (the
    informers' client; its owner closes it)."""

    def __init__(self, client: KubeClient, audiences: Sequence[str] = (AUDIENCE,),
                 timeout: float = 5.0) -> None:
        self.client = client
        self.audiences = tuple(audiences)
        self.timeout = timeout

    async def _call(self, path: str, method: str, body: Any = None) -> aiohttp.ClientResponse:
        try:
            return await self.client.raw(self.client.api_client.call_api(
                path, method, body=body,
                header_params={"Accept": "application/json",
                               "Content-Type": "application/json"},
                auth_settings=["BearerToken"], _preload_content=False,
                _request_timeout=aiohttp.ClientTimeout(total=self.timeout)))
        except RuntimeError as exc:  # the client was closed (the control plane is stopping)
            raise ApiError(0, str(exc)) from None

    async def review(self, token: str) -> ServiceAccountUser:
        """The service account the token belongs to; TokenRejected or ReviewUnavailable."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": list(self.audiences)}}
        try:
            answer = await read_json(await self._call(PATH, "POST", body))
        except _FAILURES as exc:
            raise ReviewUnavailable(f"TokenReview failed: {exc}") from None
        return parse_review(answer, self.audiences)

    async def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The pod (GET), or None when it does not exist; ReviewUnavailable on failure."""
        path = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(name, safe='')}"
        try:
            resp = await self._call(path, "GET")
            if resp.status == 404:
                resp.release()
                return None
            data = await read_json(resp)
        except _FAILURES as exc:
            raise ReviewUnavailable(f"reading pod {namespace}/{name} failed: {exc}") from None
        if not isinstance(data, dict):
            raise ReviewUnavailable(f"pod {namespace}/{name}: the answer is not an object")
        return data
