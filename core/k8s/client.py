"""The Kubernetes API server as a transport: configuration, raw list and watch, errors.

kubernetes_asyncio is used for what it is good at: loading a kubeconfig (or the pod's
service-account token and CA), TLS, auth (including token refresh) and the aiohttp session.
Responses are read raw (`_preload_content=False`) and objects stay plain dicts: one
malformed object cannot break the deserialisation of a whole list, and the same code lists
a Pod collection or an Istio CRD's. The watch protocol itself is core/k8s/reflector.py's.

Which calls a product makes is its own business, declared in its own table of `ApiCall`s
(agent/k8s/api.py, controlplane/kube/informer.py) so that RBAC can be checked against it.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError
from kubernetes_asyncio import client as kclient
from kubernetes_asyncio import config as kconfig

# What the pod's service account looks like from inside (kubernetes_asyncio's defaults too).
SERVICE_HOST_ENV = "KUBERNETES_SERVICE_HOST"
TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"
# One watch line is one object: etcd caps objects at 1.5 MiB, their JSON stays well below
# this. aiohttp's default (128 KiB) would fail a large pod or EndpointSlice event forever.
MAX_LINE = 16 << 20
LIST_PAGE = 500  # items per list page (`limit`), as client-go's pager


@dataclass(frozen=True)
class ApiCall:
    verb: str      # RBAC verb: get, list, watch, patch, ...
    group: str     # API group, "" for the core group
    resource: str  # plural resource name as RBAC spells it


class ApiError(Exception):
    """A non-2xx answer (status > 0) or a transport failure (status 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status


@dataclass(frozen=True)
class Listing:
    items: list[Any]
    resource_version: str


def in_cluster(environ: Mapping[str, str] | None = None, token_file: str = TOKEN_FILE) -> bool:
    """Inside a pod with a service-account token mounted (where `connect("")` works)."""
    env = os.environ if environ is None else environ
    return bool(env.get(SERVICE_HOST_ENV)) and os.path.isfile(token_file)


async def load_configuration(kubeconfig: str = "") -> kclient.Configuration:
    """From a kubeconfig file (its current context), or (empty path) the pod's service
    account. Errors (no such file, no token) raise kubernetes_asyncio's ConfigException or
    OSError: the caller reports them at start."""
    conf = kclient.Configuration()
    if kubeconfig and not os.path.isfile(kubeconfig):
        # (the client's own message for this is "Expected key current-context")
        raise kconfig.ConfigException(f"kubeconfig {kubeconfig}: no such file")
    if kubeconfig:
        await kconfig.load_kube_config(config_file=kubeconfig, client_configuration=conf)
    else:
        kconfig.load_incluster_config(client_configuration=conf)  # type: ignore[no-untyped-call]
    return conf


async def check(resp: aiohttp.ClientResponse) -> None:
    """ApiError (with the start of the body) unless the answer is 2xx."""
    if not 200 <= resp.status <= 299:
        body = (await resp.read())[:500].decode(errors="replace")
        resp.release()
        raise ApiError(resp.status, body)


async def read_json(resp: aiohttp.ClientResponse) -> Any:
    await check(resp)
    try:
        return json.loads(await resp.read())
    except ValueError as exc:
        raise ApiError(resp.status, f"not JSON: {exc}") from None
    finally:
        resp.release()


def listing(data: Any) -> Listing:
    if not isinstance(data, dict) or not isinstance(data.get("items", []), list):
        raise ApiError(200, "list answer is not a List object")
    rv = (data.get("metadata") or {}).get("resourceVersion")
    if not isinstance(rv, str) or not rv:
        raise ApiError(200, "list answer has no metadata.resourceVersion")
    return Listing(items=list(data.get("items") or []), resource_version=rv)


def watch_args(resource_version: str, timeout_seconds: int) -> dict[str, Any]:
    """The keyword arguments of a typed kubernetes_asyncio list call that make it a watch."""
    # The server ends the watch after timeout_seconds; the client gives it a margin before
    # declaring the connection dead (a silent half-open TCP connection).
    return {"watch": True, "resource_version": resource_version,
            "allow_watch_bookmarks": True, "timeout_seconds": timeout_seconds,
            "_preload_content": False, "_request_timeout": _watch_timeout(timeout_seconds)}


def _watch_timeout(timeout_seconds: int) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_seconds + 30)


class KubeClient:
    """One API server connection (an `ApiClient` and its aiohttp session)."""

    def __init__(self, api_client: kclient.ApiClient) -> None:
        self.api_client = api_client

    @classmethod
    async def connect(cls, kubeconfig: str = "") -> KubeClient:
        """From a kubeconfig file, or (empty path) the pod's service account."""
        return cls(kclient.ApiClient(await load_configuration(kubeconfig)))

    async def close(self) -> None:
        await self.api_client.close()

    # -- raw responses of any call ---------------------------------------------------------------

    @staticmethod
    async def raw(call: Awaitable[Any]) -> aiohttp.ClientResponse:
        """The response of a `_preload_content=False` call; transport errors as ApiError(0)."""
        try:
            resp = await call
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ApiError(0, f"{type(exc).__name__}: {exc}") from None
        assert isinstance(resp, aiohttp.ClientResponse)
        return resp

    async def lines(self, call: Awaitable[Any]) -> AsyncIterator[bytes]:
        """The raw lines of a watch stream; HTTP errors raise ApiError before the first."""
        resp = await self.raw(call)
        try:
            await check(resp)
            while True:
                try:
                    line = await resp.content.readline(max_line_length=MAX_LINE)
                except (aiohttp.ClientError, HttpProcessingError, OSError,
                        TimeoutError) as exc:
                    raise ApiError(0, f"watch stream broke: {type(exc).__name__}: {exc}") \
                        from None
                if not line:
                    return  # the server ended the watch (timeoutSeconds): watch again
                yield line
        finally:
            resp.release()

    # -- any collection, by path -------------------------------------------------------------------

    def _get(self, path: str, query: list[tuple[str, str]],
             timeout: aiohttp.ClientTimeout) -> Awaitable[Any]:
        return self.api_client.call_api(  # type: ignore[no-any-return]
            path, "GET", query_params=query, header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"], _preload_content=False, _request_timeout=timeout)

    async def list(self, path: str, params: Mapping[str, str] | None = None,
                   page_size: int = LIST_PAGE,
                   each: Callable[[Any], Any] | None = None) -> Listing:
        """Every object of a collection (`/api/v1/pods`, `/apis/<group>/<version>/<plural>`,
        or below `namespaces/<ns>/`), page by page (`limit`/`continue`: one consistent
        snapshot, and the API server never builds one huge answer). An expired continue token
        is ApiError(410): list again. `each`, if given, makes the items: it is applied to
        every object as its page arrives, and the page's decoded objects are dropped before
        the next page is read (a big collection is never held decoded whole)."""
        items: list[Any] = []
        token = ""
        while True:
            query = list((params or {}).items())
            if page_size:
                query.append(("limit", str(page_size)))
            if token:
                query.append(("continue", token))
            resp = await self.raw(self._get(path, query, aiohttp.ClientTimeout(total=60)))
            data = await read_json(resp)
            page = listing(data)
            token = str((data.get("metadata") or {}).get("continue") or "")
            data = None
            if each is None:
                items.extend(page.items)
            else:
                raw = page.items
                raw.reverse()
                while raw:
                    items.append(each(raw.pop()))
            if not token:
                return Listing(items=items, resource_version=page.resource_version)

    def watch(self, path: str, resource_version: str, timeout_seconds: int,
              params: Mapping[str, str] | None = None) -> AsyncIterator[bytes]:
        """The raw event lines of a watch from `resource_version`, bookmarks asked for; ends
        when the server ends it (after `timeout_seconds`)."""
        query = [*(params or {}).items(), ("watch", "true"),
                 ("resourceVersion", resource_version), ("allowWatchBookmarks", "true"),
                 ("timeoutSeconds", str(timeout_seconds))]
        return self.lines(self._get(path, query, _watch_timeout(timeout_seconds)))
