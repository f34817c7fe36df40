"""Every Kubernetes API call the agent makes, and nothing else.

All calls go through `KubeApi`, and each of its methods is declared with the (verb, API group,
resource) it needs in `CALLS`. `tests/k8s/test_rbac_covers_calls.py` imports that table and
checks it against the ClusterRole in deploy/rbac.yaml, and checks that no other module in
agent/ touches the client library: so RBAC can be least privilege and stay correct.

The client (kubernetes_asyncio) is used as transport only: configuration (kubeconfig or
in-cluster token and CA), TLS, auth and URL building; the typed calls below build the URLs,
core/k8s/client.py does the rest (raw responses, ApiError), shared with the control plane.
Responses are read raw (`_preload_content=False`): the watch protocol is handled in
`watch.py` (core/k8s/reflector.py), and objects stay plain dicts, so one malformed object
cannot break deserialisation of a whole list.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import aiohttp
from kubernetes_asyncio import client as kclient

from core.k8s.client import ApiCall as ApiCall
from core.k8s.client import ApiError as ApiError
from core.k8s.client import KubeClient, load_configuration, watch_args
from core.k8s.client import Listing as Listing
from core.k8s.client import listing as _listing
from core.k8s.client import read_json as _json

# Filled by @_call below: method name -> the RBAC permissions it needs.
CALLS: dict[str, tuple[ApiCall, ...]] = {}

P = ParamSpec("P")
R = TypeVar("R")


def _call(*needs: tuple[str, str, str]) -> Callable[[Callable[P, R]], Callable[P, R]]:
    def mark(fn: Callable[P, R]) -> Callable[P, R]:
        CALLS[fn.__name__] = tuple(ApiCall(v, g, r) for v, g, r in needs)
        return fn
    return mark


class KubeApi:
    def __init__(self, api_client: kclient.ApiClient) -> None:
        self._client = api_client
        self._kube = KubeClient(api_client)  # the transport (core/k8s/client.py)
        self._core = kclient.CoreV1Api(api_client)
        self._apps = kclient.AppsV1Api(api_client)

    @classmethod
    async def connect(cls, kubeconfig: str = "") -> KubeApi:
        """From a kubeconfig file, or (empty path) the pod's service account."""
        return cls(kclient.ApiClient(await load_configuration(kubeconfig)))

    async def close(self) -> None:
        await self._client.close()

    async def _raw(self, call: Awaitable[Any]) -> aiohttp.ClientResponse:
        return await self._kube.raw(call)

    def _lines(self, call: Awaitable[Any]) -> AsyncIterator[bytes]:
        """The raw lines of a watch stream; HTTP errors raise ApiError before the first."""
        return self._kube.lines(call)

    @staticmethod
    def _watch_args(resource_version: str, timeout_seconds: int) -> dict[str, Any]:
        return watch_args(resource_version, timeout_seconds)

    # -- pods on this node -------------------------------------------------------------------

    @_call(("list", "", "pods"))
    async def list_pods(self, node: str) -> Listing:
        resp = await self._raw(self._core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={node}", _preload_content=False,
            _request_timeout=aiohttp.ClientTimeout(total=60)))
        return _listing(await _json(resp))

    @_call(("watch", "", "pods"))
    def watch_pods(self, node: str, resource_version: str,
                   timeout_seconds: int) -> AsyncIterator[bytes]:
        return self._lines(self._core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={node}",
            **self._watch_args(resource_version, timeout_seconds)))

    @_call(("patch", "", "pods"))
    async def patch_pod_annotations(self, namespace: str, name: str,
                                    annotations: dict[str, str | None]) -> None:
        """Only these keys change (None removes one) and nothing else is sent, so it cannot
        undo another writer's change. The client sends a dict body as a strategic merge
        patch, which for a map like annotations is a plain merge."""
        body = {"metadata": {"annotations": annotations}}
        resp = await self._raw(self._core.patch_namespaced_pod(
            name, namespace, body, _preload_content=False,
            _request_timeout=aiohttp.ClientTimeout(total=30)))
        await _json(resp)

    # -- namespaces ----------------------------------------------------------------------------

    @_call(("list", "", "namespaces"))
    async def list_namespaces(self) -> Listing:
        resp = await self._raw(self._core.list_namespace(
            _preload_content=False, _request_timeout=aiohttp.ClientTimeout(total=60)))
        return _listing(await _json(resp))

    @_call(("watch", "", "namespaces"))
    def watch_namespaces(self, resource_version: str,
                         timeout_seconds: int) -> AsyncIterator[bytes]:
        return self._lines(self._core.list_namespace(
            **self._watch_args(resource_version, timeout_seconds)))

    # -- this node -----------------------------------------------------------------------------

    @_call(("get", "", "nodes"))
    async def get_node(self, name: str) -> dict[str, Any]:
        resp = await self._raw(self._core.read_node(
            name, _preload_content=False, _request_timeout=aiohttp.ClientTimeout(total=30)))
        data = await _json(resp)
        if not isinstance(data, dict):
            raise ApiError(200, "node is not an object")
        return data

    @_call(("patch", "", "nodes"))
    async def patch_node_json(self, name: str, ops: list[dict[str, Any]]) -> None:
        """A JSON patch (RFC 6902; the client's content type for a list body): callers put
        `test` ops first so the server applies it only to the version they read."""
        resp = await self._raw(self._core.patch_node(
            name, ops, _preload_content=False,
            _request_timeout=aiohttp.ClientTimeout(total=30)))
        await _json(resp)

    # -- the agent's own DaemonSet ---------------------------------------------------------------

    @_call(("get", "apps", "daemonsets"))
    async def get_daemonset(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The DaemonSet, or None if it does not exist (404): on SIGTERM, an agent whose
        DaemonSet is gone or being deleted is being uninstalled, not upgraded."""
        resp = await self._raw(self._apps.read_namespaced_daemon_set(
            name, namespace, _preload_content=False,
            _request_timeout=aiohttp.ClientTimeout(total=5)))
        if resp.status == 404:
            resp.release()
            return None
        data = await _json(resp)
        if not isinstance(data, dict):
            raise ApiError(200, "daemonset is not an object")
        return data
