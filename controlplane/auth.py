"""Who calls ADS or the CA: a node agent (and on which node), or a workload.

Both credentials come as `authorization: Bearer <token>` gRPC metadata (what ztunnel sends
to istiod):

- a meshnode node token (`mn1.…`, controlplane/nodeauth.py): the node agent of the node it
  was minted for. Accepted whatever the source, checked locally with the token key;
- a Kubernetes service-account token (audience `istio-ca`), checked by the API server's
  TokenReview (controlplane/kube/tokenreview.py): only when the control plane reads an API
  server (`--kubeconfig`, in-cluster); with a mesh file or manifests there is nobody to ask.
  Its service account decides what the caller is, as istiod's node authorizer does:
  - one of the trusted node accounts (`--trusted-node-account`, default
    meshnode-system/meshnode-node; istiod's CA_TRUSTED_NODE_ACCOUNTS, e.g.
    istio-system/ztunnel): a node agent, on the node of the token's bound pod;
  - any other: a workload, which may be issued its own identity only.
  A `clusterid` metadata naming another cluster is refused (istiod would look for that
  cluster's API server; we know only ours).

Failures are `AuthError`s: UNAUTHENTICATED with the reason (no token, a bad one, its pod
gone), or UNAVAILABLE when the API server cannot be asked. Never a pass by default.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import grpc

from controlplane import nodeauth
from controlplane.kube.tokenreview import (
    ReviewUnavailable,
    ServiceAccountUser,
    TokenRejected,
    TokenReviewer,
)

CLUSTER_ID_HEADER = "clusterid"
DEFAULT_TRUSTED_NODE_ACCOUNTS = ("meshnode-system/meshnode-node",)
FAILURE = "request authenticate failure"   # istiod's words, then ours

Metadata = Iterable[tuple[str, str | bytes]] | None


class AuthError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Caller:
    """An authenticated caller. `node_agent`: it may be issued the identities of the
    workloads on `node`; otherwise only its own (`namespace`/`service_account`)."""

    node: str                  # "" when unknown (a workload's token without node info)
    namespace: str = ""        # the Kubernetes service account; "" for a node token
    service_account: str = ""
    node_agent: bool = True

    def __str__(self) -> str:
        if not self.namespace:
            return f"node token of {self.node}"
        role = "node agent" if self.node_agent else "workload"
        where = f" on {self.node}" if self.node else ""
        return f"{role} {self.namespace}/{self.service_account}{where}"


def parse_account(text: str) -> tuple[str, str]:
    """`namespace/serviceaccount` -> (namespace, serviceaccount); ValueError otherwise."""
    ns, sep, sa = text.strip().partition("/")
    if not sep or not ns or not sa or "/" in sa:
        raise ValueError(f"{text!r} is not <namespace>/<service account>")
    return ns, sa


def _header(metadata: Metadata, name: str) -> str | None:
    for k, v in metadata or ():
        if k.lower() == name:
            return v.decode() if isinstance(v, bytes) else v
    return None


def bearer(metadata: Metadata) -> str:
    """The bearer token of the `authorization` metadata, "" if there is none."""
    value = _header(metadata, nodeauth.AUTH_HEADER) or ""
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class Authenticator:
    """`reviewer` is set (by the control plane, once its API-server client exists) when
    Kubernetes tokens can be checked; None: node tokens only."""

    def __init__(self, token_key: bytes,
                 trusted_node_accounts: Sequence[str] = DEFAULT_TRUSTED_NODE_ACCOUNTS,
                 cluster_id: str = "", reviewer: TokenReviewer | None = None) -> None:
        self.token_key = token_key
        self.trusted = frozenset(parse_account(a) for a in trusted_node_accounts)
        self.cluster_id = cluster_id
        self.reviewer = reviewer

    async def authenticate(self, metadata: Metadata) -> Caller:
        token = bearer(metadata)
        if not token:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED,
                            f"{FAILURE}: no bearer token in the authorization metadata")
        if token.startswith(nodeauth.PREFIX + "."):
            node = nodeauth.verify(self.token_key, token)
            if node is None:
                raise AuthError(grpc.StatusCode.UNAUTHENTICATED,
                                f"{FAILURE}: not a valid node token (minted with another "
                                "token key?)")
            return Caller(node=node)
        if self.reviewer is None:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED,
                            f"{FAILURE}: not a node token; Kubernetes service-account tokens "
                            "are checked only when the control plane reads an API server "
                            "(--kubeconfig, in-cluster)")
        cluster = _header(metadata, CLUSTER_ID_HEADER)
        if cluster and self.cluster_id and cluster != self.cluster_id:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED,
                            f"{FAILURE}: a token of cluster {cluster!r}; this control plane "
                            f"checks tokens of cluster {self.cluster_id!r} only")
        try:
            user = await self.reviewer.review(token)
            if (user.namespace, user.service_account) not in self.trusted:
                return Caller(node=user.node_name, namespace=user.namespace,
                              service_account=user.service_account, node_agent=False)
            node = user.node_name or await self._pod_node(self.reviewer, user)
        except TokenRejected as exc:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED,
                            f"{FAILURE}: Kubernetes token: {exc}") from None
        except ReviewUnavailable as exc:
            raise AuthError(grpc.StatusCode.UNAVAILABLE,
                            f"cannot check the Kubernetes token now, refusing: {exc}") from None
        return Caller(node=node, namespace=user.namespace,
                      service_account=user.service_account)

    @staticmethod
    async def _pod_node(reviewer: TokenReviewer, user: ServiceAccountUser) -> str:
        """The node of a node agent's bound pod (API servers before 1.30 put no node in the
        token): the pod must still be the token's (same uid, same service account)."""
        if not user.pod_name:
            raise TokenRejected(f"the token of node agent {user} is not bound to a pod, so its "
                                "node is unknown (use a projected service-account token)")
        pod = await reviewer.pod(user.namespace, user.pod_name)
        where = f"{user.namespace}/{user.pod_name}"
        if pod is None:
            raise TokenRejected(f"the token's pod {where} does not exist")
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        if user.pod_uid and meta.get("uid") != user.pod_uid:
            raise TokenRejected(f"the token's pod {where} has uid {meta.get('uid')}, not the "
                                f"token's {user.pod_uid} (re-created?)")
        if spec.get("serviceAccountName") != user.service_account:
            raise TokenRejected(f"the token's pod {where} runs as "
                                f"{spec.get('serviceAccountName')!r}, not {user}")
        node = spec.get("nodeName")
        if not isinstance(node, str) or not node:
            raise TokenRejected(f"the token's pod {where} is not scheduled on a node")
        return node
