"""The cluster as the CLI reads it: meshnode's pods, and each agent's own HTTP endpoints
through the API server's pod proxy subresource
(`GET /api/v1/namespaces/{ns}/pods/{name}:{port}/proxy/{path}`), as `kubectl get --raw` does.

What that needs (the RBAC a user or a ServiceAccount running `meshnode status --kubeconfig`
must hold, in the namespace of the DaemonSet, meshnode-system by default):

    pods        list   the agent pods (label app.kubernetes.io/name=meshnode-node), the
                       control plane's (for `meshnode version`)
    pods/proxy  get    each agent's /debug/status and /debug/version

and the agent's HTTP server reachable from the API server at the pod's IP (the agent runs
on the host network, so the node's IP): `http_address` on that address or 0.0.0.0, not
127.0.0.1. `CALLS` lists the same, so a test can check a Role against it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

from cli.errors import UserError
from core.k8s.client import ApiCall
from core.ports import AGENT_STATS_PORT

T = TypeVar("T")

NAMESPACE = "meshnode-system"
AGENT_SELECTOR = "app.kubernetes.io/name=meshnode-node"
CONTROLPLANE_SELECTOR = "app.kubernetes.io/name=meshnode-controlplane"
PROXY_SELECTOR = "app.kubernetes.io/name=meshnode-proxy"
CALLS = (ApiCall("list", "", "pods"), ApiCall("get", "", "pods/proxy"))
TIMEOUT = 10.0


@dataclass
class Reply:
    status: int  # 0: the API server did not answer
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def message(self) -> str:
        d = self.json()
        if isinstance(d, dict) and d.get("message"):
            return str(d["message"])
        return self.body.decode(errors="replace").strip()[:300]


class Cluster:
    """One API server connection (kubeconfig, or the pod's service account)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    @classmethod
    async def connect(cls, kubeconfig: str) -> Cluster:
        from kubernetes_asyncio.config import ConfigException

        from core.k8s.client import KubeClient

        try:
            return cls(await KubeClient.connect(kubeconfig))
        except (ConfigException, OSError) as exc:
            if not kubeconfig:
                raise UserError(f"no service account here ({exc}): --in-cluster works in a "
                                "pod; elsewhere give --kubeconfig FILE") from None
            msg = str(exc)
            raise UserError(msg if kubeconfig in msg else f"kubeconfig {kubeconfig}: {msg}") \
                from None

    async def close(self) -> None:
        await self.client.close()

    async def get(self, path: str, query: list[tuple[str, str]] | None = None) -> Reply:
        import aiohttp

        try:
            resp = await self.client.api_client.call_api(
                path, "GET", query_params=query or [], header_params={"Accept": "*/*"},
                auth_settings=["BearerToken"], _preload_content=False,
                _request_timeout=aiohttp.ClientTimeout(total=TIMEOUT))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return Reply(0, f"{type(exc).__name__}: {exc}".encode())
        try:
            return Reply(resp.status, await resp.read())
        finally:
            resp.release()

    async def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """The pods of `namespace` that carry `selector`'s label (`k=v`)."""
        r = await self.get(f"/api/v1/namespaces/{quote(namespace, safe='')}/pods",
                           [("labelSelector", selector)])
        if r.status == 0:
            raise UserError(f"the API server did not answer: {r.message()}")
        if r.status in (401, 403):
            raise UserError(f"the API server refused to list pods in {namespace} "
                            f"(HTTP {r.status}: {r.message()}): the RBAC `meshnode status "
                            f"--kubeconfig` needs is `list pods` and `get pods/proxy` in "
                            f"{namespace}")
        if r.status != 200:
            raise UserError(f"list pods in {namespace}: HTTP {r.status}: {r.message()}")
        key, _, value = selector.partition("=")
        items = (r.json() or {}).get("items") or []
        return sorted((p for p in items
                       if ((p.get("metadata") or {}).get("labels") or {}).get(key) == value),
                      key=lambda p: ((p.get("spec") or {}).get("nodeName") or "",
                                     p["metadata"]["name"]))

    async def pod_proxy(self, namespace: str, name: str, port: int, path: str) -> Reply:
        """GET `path` of the pod's `port`, through the API server (pods/proxy)."""
        return await self.get(f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/"
                              f"{quote(name, safe='')}:{port}/proxy{path}")


def add_cluster_flags(p: argparse.ArgumentParser, kubeconfig_help: str, *,
                      in_cluster: bool = False) -> None:
    """The flags of a command that can also read every node through the API server."""
    g = p.add_argument_group("the whole cluster")
    g.add_argument("--kubeconfig", metavar="FILE", help=kubeconfig_help)
    if in_cluster:
        g.add_argument("--in-cluster", action="store_true",
                       help="the same, with this pod's service account")
    g.add_argument("-n", "--namespace", default=NAMESPACE,
                   help="where meshnode's DaemonSets run (default: %(default)s)")
    g.add_argument("--agent-port", type=int, default=AGENT_STATS_PORT, metavar="PORT",
                   help="the agents' metrics port, which serves their status (metrics_address; "
                        "default: %(default)s)")


def run(kubeconfig: str, fn: Callable[[Cluster], Awaitable[T]]) -> T:
    """`fn(cluster)` on a fresh event loop, the connection closed after."""
    async def main() -> T:
        cluster = await Cluster.connect(kubeconfig)
        try:
            return await fn(cluster)
        finally:
            await cluster.close()

    return asyncio.run(main())


def pod_ready(pod: dict[str, Any]) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def image_tag(pod: dict[str, Any], container: str = "") -> str:
    """The image tag of `container` (default: the first), as istioctl reads a control
    plane's version off its Deployment."""
    for c in (pod.get("spec") or {}).get("containers") or []:
        if not container or c.get("name") == container:
            image = str(c.get("image") or "")
            name, _, tag = image.rpartition(":")
            return tag if name and "/" not in tag else image
    return ""
