"""A local HTTP server that speaks the Kubernetes list/watch protocol for any resource, built-in
or custom (there is no API server on this machine). The agent's tests (tests/k8s) and the
control plane's (tests/controlplane/kube) both run against it.

- resources are served at their real paths: `/api/v1/<plural>` for the core group,
  `/apis/<group>/<version>/<plural>` for the others (CRDs included), and below
  `namespaces/<ns>/` for one namespace; a resource that is not served is a 404 (a CRD that is
  not installed); `FakeApi(resources=...)` or `serve(...)` choose which;
- one global resourceVersion counter, stamped on every change, as etcd does;
- list: `{"kind": "...List", "metadata": {"resourceVersion"}, "items"}`, filtered by
  `fieldSelector=spec.nodeName=<node>`; items of built-in kinds carry no apiVersion/kind,
  custom resources' do (as the API server answers); `limit` pages it with `continue` tokens
  (410 once compacted);
- watch (`?watch=true&resourceVersion=N`): a chunked stream of JSON lines
  (ADDED/MODIFIED/DELETED/BOOKMARK/ERROR), replaying history after N first; event objects carry
  apiVersion/kind; bookmarks only when the client asked with `allowWatchBookmarks=true`; ends
  after `timeoutSeconds`;
- a resourceVersion older than the last `compact()` gets 410 Gone: an ERROR event with a
  Status (what the API server sends on a started watch) or, with `gone_as_http`, the HTTP
  status itself;
- GET of one object (a node, a DaemonSet, ...);
- PATCH of a pod (strategic merge / merge: annotations) and of a node (JSON patch with
  `test`, `add`, `remove`, `replace`; a failed test is a 422, as in the API server); every
  patch is recorded;
- the pod proxy subresource (GET `/api/v1/namespaces/<ns>/pods/<name>[:<port>]/proxy/<path>`,
  `kubectl get --raw`'s way to a pod's own HTTP port): the request goes on to the pod's
  `status.podIP`:port from the server's own network namespace (ThreadedFakeApi(netns=...)
  puts the server in a lab netns that routes to the pods), and the pod's answer comes back
  as it is; a pod that does not answer is a 503 Status, as the API server's
  "error trying to reach service";
- TokenReview (POST /apis/authentication.k8s.io/v1/tokenreviews): tests register tokens
  with `add_token(token, user, audiences)` (`sa_user` builds a service account's user as the
  API server does); an unknown token, or one without any of the asked audiences (default:
  the API server's own, `API_AUDIENCES`), is answered `authenticated: false` with an error,
  as the API server answers.
Tests change the world with `put`, `delete`, `compact`, `bookmark`, `inject`, `close_watches`,
`fail_next`; with `notify=False` a change is not sent to live watches (it happened while
the client was away). `stop()` then `start(port=api.port)` is an API server restart that
keeps its state.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")
Obj = dict[str, Any]


@dataclass(frozen=True)
class Resource:
    plural: str
    kind: str
    group: str = ""        # "" for the core group
    version: str = "v1"
    namespaced: bool = True
    custom: bool = False   # a CRD's: list items carry apiVersion and kind

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def path(self) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        return f"{base}/{self.plural}"


PODS = Resource("pods", "Pod")
NAMESPACES = Resource("namespaces", "Namespace", namespaced=False)
NODES = Resource("nodes", "Node", namespaced=False)
DAEMONSETS = Resource("daemonsets", "DaemonSet", "apps")
SERVICES = Resource("services", "Service")
ENDPOINT_SLICES = Resource("endpointslices", "EndpointSlice", "discovery.k8s.io")
SERVICE_ENTRIES = Resource("serviceentries", "ServiceEntry", "networking.istio.io",
                           custom=True)
WORKLOAD_ENTRIES = Resource("workloadentries", "WorkloadEntry", "networking.istio.io",
                            custom=True)
AUTHORIZATION_POLICIES = Resource("authorizationpolicies", "AuthorizationPolicy",
                                  "security.istio.io", custom=True)
PEER_AUTHENTICATIONS = Resource("peerauthentications", "PeerAuthentication",
                                "security.istio.io", custom=True)
VIRTUAL_SERVICES = Resource("virtualservices", "VirtualService", "networking.istio.io",
                            custom=True)
DESTINATION_RULES = Resource("destinationrules", "DestinationRule", "networking.istio.io",
                             custom=True)
SIDECARS = Resource("sidecars", "Sidecar", "networking.istio.io", custom=True)

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
# /api/v1/namespaces/<ns>/pods/<name>[:<port>]/proxy[/<path>]: the pods/proxy subresource.
POD_PROXY = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/:]+)"
                       r"(?::(?P<port>\d+))?/proxy(?P<rest>/.*)?$")
API_AUDIENCES = ("https://kubernetes.default.svc.cluster.local",)  # --api-audiences

# What the agent's tests have always had.
AGENT_RESOURCES = (PODS, NAMESPACES, NODES, DAEMONSETS)
# Every kind the control plane reads (controlplane/kube/objects.py KINDS), Istio's CRDs too.
CONTROLPLANE_RESOURCES = (NAMESPACES, NODES, PODS, SERVICES, ENDPOINT_SLICES, SERVICE_ENTRIES,
                          WORKLOAD_ENTRIES, AUTHORIZATION_POLICIES, PEER_AUTHENTICATIONS,
                          VIRTUAL_SERVICES, DESTINATION_RULES, SIDECARS)


@dataclass
class Watch:
    resource: str
    node: str | None
    namespace: str | None
    bookmarks: bool
    queue: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)


def pod(name: str, namespace: str = "default", node: str = "node1", ip: str = "10.0.0.1",
        labels: dict[str, str] | None = None, host_network: bool = False,
        phase: str = "Running", uid: str = "") -> Obj:
    return {"metadata": {"name": name, "namespace": namespace, "uid": uid or str(uuid.uuid4()),
                         "labels": labels or {}, "annotations": {}},
            "spec": {"nodeName": node, "hostNetwork": host_network},
            "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}] if ip else []}}


def namespace(name: str, labels: dict[str, str] | None = None) -> Obj:
    return {"metadata": {"name": name, "uid": f"ns-{name}", "labels": labels or {}}}


def daemonset(name: str, namespace: str, deleting: bool = False) -> Obj:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": f"uid-ds-{name}"}
    if deleting:
        meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": meta, "spec": {}}


def node(name: str, taints: list[dict[str, Any]]) -> Obj:
    return {"metadata": {"name": name, "uid": f"node-{name}"}, "spec": {"taints": taints}}


def obj(resource: Resource, name: str, namespace: str = "", **fields: Any) -> Obj:
    """Any object of `resource` (uid left to `put`): `obj(SERVICE_ENTRIES, "ext", "shop",
    spec={...})`."""
    meta: dict[str, Any] = {"name": name}
    if resource.namespaced:
        meta["namespace"] = namespace or "default"
    return {"apiVersion": resource.api_version, "kind": resource.kind, "metadata": meta,
            **copy.deepcopy(fields)}


def sa_user(namespace: str, service_account: str, pod_name: str = "", pod_uid: str = "",
            node_name: str = "") -> Obj:
    """The TokenReview `status.user` of a service account's token (node_name: what
    Kubernetes >= 1.30 adds for a pod-bound token)."""
    extra: dict[str, list[str]] = {}
    if pod_name:
        extra["authentication.kubernetes.io/pod-name"] = [pod_name]
        extra["authentication.kubernetes.io/pod-uid"] = [pod_uid]
    if node_name:
        extra["authentication.kubernetes.io/node-name"] = [node_name]
    user: Obj = {"username": f"system:serviceaccount:{namespace}:{service_account}",
                 "uid": f"sa-{namespace}-{service_account}",
                 "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}",
                            "system:authenticated"]}
    if extra:
        user["extra"] = extra
    return user


def _meta(o: Obj) -> dict[str, Any]:
    meta = o.get("metadata")
    return meta if isinstance(meta, dict) else {}


class FakeApi:
    def __init__(self, resources: Iterable[Resource] = AGENT_RESOURCES) -> None:
        self.rv = 100
        self.resources: dict[str, Resource] = {}
        self.objects: dict[str, dict[str, Obj]] = {}
        self.serve(*resources)
        self.history: list[tuple[int, str, str, Obj]] = []
        self.compacted = 0
        self.gone_as_http = False
        self.watches: list[Watch] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.auth: list[str] = []  # the Authorization header of every request
        self.patches: list[dict[str, Any]] = []
        self.failures: list[tuple[str, int]] = []  # (method path prefix, status), FIFO
        self.on_node_patch: Callable[[], None] | None = None  # a concurrent writer
        self.tokens: dict[str, tuple[tuple[str, ...], Obj]] = {}  # token -> (audiences, user)
        self._pages: dict[str, tuple[int, list[Obj]]] = {}  # continue token -> (rv, rest)
        self.port = 0
        self._runner: web.AppRunner | None = None

    def serve(self, *resources: Resource) -> None:
        """Serve these resources too (a CRD installed), keyed by plural."""
        for r in resources:
            self.resources[r.plural] = r
            self.objects.setdefault(r.plural, {})

    def unserve(self, plural: str) -> None:
        """Stop serving a resource (a CRD uninstalled): its objects are gone, paths 404."""
        self.resources.pop(plural, None)
        self.objects.pop(plural, None)
        self.close_watches(plural)

    # -- server --------------------------------------------------------------------------------

    async def start(self, port: int = 0) -> FakeApi:
        """Listen on 127.0.0.1 (`port` 0: any free one; the old one to restart)."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        self.close_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, path: Path) -> str:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "agent", "user": {"token": "test-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "agent"}}]}))
        return str(path)

    # -- the world -----------------------------------------------------------------------------

    def _typed(self, resource: str, o: Obj) -> Obj:
        """A copy with apiVersion and kind, as the API server sends single objects."""
        r = self.resources.get(resource)
        out = copy.deepcopy(o)
        if r is not None:
            out["apiVersion"], out["kind"] = r.api_version, r.kind
        return out

    def _stamp(self, resource: str, kind: str, o: Obj, notify: bool) -> None:
        self.rv += 1
        o["metadata"]["resourceVersion"] = str(self.rv)
        snap = self._typed(resource, o)
        self.history.append((self.rv, resource, kind, snap))
        if notify:
            for w in self.watches:
                if w.resource == resource and self._visible(w, snap):
                    w.queue.put_nowait(("event", {"type": kind, "object": snap}))

    @staticmethod
    def _visible(w: Watch, o: Obj) -> bool:
        if w.namespace is not None and _meta(o).get("namespace") != w.namespace:
            return False
        return w.node is None or (o.get("spec") or {}).get("nodeName") == w.node

    def find(self, resource: str, name: str, namespace: str = "") -> Obj | None:
        """The stored object of that name (and namespace), or None."""
        for o in self.objects[resource].values():
            meta = _meta(o)
            if meta.get("name") == name and (meta.get("namespace") or "") == namespace:
                return o
        return None

    def put(self, resource: str, obj: Obj, notify: bool = True) -> Obj:
        """Create or replace; an object without a uid takes the uid of the one of the same
        name (an update) or a new one (a create)."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("uid"):
            same = self.find(resource, meta.get("name", ""), meta.get("namespace") or "")
            meta["uid"] = _meta(same)["uid"] if same is not None else str(uuid.uuid4())
        uid = meta["uid"]
        kind = "MODIFIED" if uid in self.objects[resource] else "ADDED"
        self.objects[resource][uid] = obj
        self._stamp(resource, kind, obj, notify)
        return obj

    def get(self, resource: str, uid: str) -> Obj:
        return self.objects[resource][uid]

    def relabel(self, resource: str, uid: str, labels: dict[str, str],
                notify: bool = True) -> None:
        o = copy.deepcopy(self.objects[resource][uid])
        o["metadata"]["labels"] = labels
        self.put(resource, o, notify)

    def delete(self, resource: str, uid: str, notify: bool = True) -> None:
        o = self.objects[resource].pop(uid)
        self._stamp(resource, "DELETED", o, notify)

    def remove(self, resource: str, name: str, namespace: str = "",
               notify: bool = True) -> None:
        """`delete` by name."""
        o = self.find(resource, name, namespace)
        assert o is not None, f"no {resource} {namespace}/{name}"
        self.delete(resource, _meta(o)["uid"], notify)

    def compact(self) -> None:
        """Forget history up to now: watching from any older version is 410 Gone."""
        self.compacted = self.rv
        self.history.clear()

    def bump(self, n: int = 1) -> None:
        """Advance the global version (changes elsewhere in the cluster)."""
        self.rv += n

    def bookmark(self, resource: str) -> None:
        for w in self.watches:
            if w.resource == resource and w.bookmarks:
                w.queue.put_nowait(("bookmark", self.rv))

    def expire(self, resource: str) -> None:
        """410 Gone on the live watches (the server's watch cache fell behind)."""
        for w in self.watches:
            if w.resource == resource:
                w.queue.put_nowait(("gone", None))

    def inject(self, resource: str, line: bytes) -> None:
        for w in self.watches:
            if w.resource == resource:
                w.queue.put_nowait(("raw", line))

    def close_watches(self, resource: str | None = None) -> None:
        for w in self.watches:
            if resource is None or w.resource == resource:
                w.queue.put_nowait(("close", None))

    def fail_next(self, what: str, status: int, times: int = 1) -> None:
        """The next `times` requests whose "METHOD path?watch" starts with `what` fail."""
        self.failures.extend([(what, status)] * times)

    def add_token(self, token: str, user: Obj, audiences: Iterable[str] = ("istio-ca",)) -> None:
        """A token the TokenReview endpoint vouches for (`remove_token`: revoked)."""
        self.tokens[token] = (tuple(audiences), copy.deepcopy(user))

    def remove_token(self, token: str) -> None:
        self.tokens.pop(token, None)

    def watch_count(self, resource: str) -> int:
        # The path's last segment, not its end: "virtualservices" ends with "services".
        return sum(1 for m, p, q in self.requests
                   if p.rsplit("/", 1)[-1] == resource and "watch" in q)

    def live_watches(self, resource: str) -> int:
        return sum(1 for w in self.watches if w.resource == resource)

    # -- handlers ------------------------------------------------------------------------------

    def _admit(self, request: web.Request, method: str) -> web.Response | None:
        """Record the request; the answer when it goes no further (an injected failure, a
        method this endpoint does not serve), else None."""
        self.requests.append((request.method, request.path, dict(request.query)))
        failed = self._failure(request)
        if failed is not None:
            return failed
        if request.method != method:
            return self._status(405, f"{request.method} is not supported here")
        return None

    def _failure(self, request: web.Request) -> web.Response | None:
        sig = f"{request.method} {request.path}{'?watch' if 'watch' in request.query else ''}"
        for i, (what, status) in enumerate(self.failures):
            if sig.startswith(what):
                del self.failures[i]
                return self._status(status, "injected failure")
        return None

    @staticmethod
    def _status(code: int, message: str) -> web.Response:
        return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                  "message": message, "code": code}, status=code)

    def _route(self, path: str) -> tuple[Resource, str | None, str | None] | None:
        """(resource, namespace or None, object name or None) of an API path."""
        parts = [p for p in path.split("/") if p]
        if parts[:1] == ["api"] and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        ns: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        if len(rest) not in (1, 2):
            return None
        r = self.resources.get(rest[0])
        if r is None or (r.group, r.version) != (group, version) or \
                (ns is not None and not r.namespaced):
            return None
        return r, ns, rest[1] if len(rest) == 2 else None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.auth.append(request.headers.get("Authorization", ""))
        if request.path == TOKEN_REVIEWS:
            return await self._token_review(request)
        proxied = POD_PROXY.match(request.path)
        if proxied is not None and "pods" in self.resources:
            return await self._pod_proxy(request, *proxied.group("ns", "name", "port", "rest"))
        route = self._route(request.path)
        if route is None:
            self.requests.append((request.method, request.path, dict(request.query)))
            failed = self._failure(request)
            return failed or self._status(404, f"the server could not find the requested "
                                               f"resource ({request.path})")
        r, ns, name = route
        if request.method == "PATCH" and name is not None and r.plural == "nodes":
            return await self._patch_node(request, name)
        if request.method == "PATCH" and name is not None and r.plural == "pods" and ns:
            return await self._patch_pod(request, ns, name)
        refused = self._admit(request, "GET")
        if refused is not None:
            return refused
        if name is not None:
            return self._get_object(r, ns or "", name)
        return await self._collection(request, r, ns)

    def _get_object(self, r: Resource, ns: str, name: str) -> web.Response:
        found = self.find(r.plural, name, ns)
        if found is None:
            return self._status(404, f"{r.kind.lower()} not found")
        return web.json_response(found)

    async def _collection(self, request: web.Request, r: Resource,
                          ns: str | None) -> web.StreamResponse:
        selector = request.query.get("fieldSelector", "")
        node_name = selector.split("=", 1)[1] if selector.startswith("spec.nodeName=") \
            else None
        w = Watch(r.plural, node_name, ns, request.query.get("allowWatchBookmarks") in (
            "true", "True", "1"))
        if request.query.get("watch") in ("true", "True", "1"):
            return await self._watch(request, r, w)
        token = request.query.get("continue", "")
        if token:
            if token not in self._pages or self._pages[token][0] < self.compacted:
                return self._status(410, "the provided continue parameter is too old")
            snap_rv, items = self._pages.pop(token)
        else:
            snap_rv = self.rv
            items = []
            for o in self.objects[r.plural].values():
                if self._visible(w, o):
                    item = self._typed(r.plural, o) if r.custom else copy.deepcopy(o)
                    if not r.custom:
                        item.pop("apiVersion", None)
                        item.pop("kind", None)
                    items.append(item)
        meta: dict[str, Any] = {"resourceVersion": str(snap_rv)}
        limit = int(request.query.get("limit") or 0)
        if limit and len(items) > limit:
            items, rest = items[:limit], items[limit:]
            token = f"{snap_rv}-{uuid.uuid4().hex[:8]}"
            self._pages[token] = (snap_rv, rest)
            meta["continue"] = token
        return web.json_response({"kind": r.kind + "List", "apiVersion": r.api_version,
                                  "metadata": meta, "items": items})

    async def _watch(self, request: web.Request, r: Resource, w: Watch) -> web.StreamResponse:
        resource = r.plural
        since = int(request.query.get("resourceVersion") or 0)
        gone = {"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired",
            "code": 410, "message": f"too old resource version: {since} ({self.compacted})"}}
        if since and since < self.compacted and self.gone_as_http:
            return self._status(410, gone["object"]["message"])  # type: ignore[index]
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)

        async def send(ev: dict[str, Any]) -> None:
            await resp.write(json.dumps(ev).encode() + b"\n")

        if since and since < self.compacted:
            await send(gone)
            return resp
        # Subscribe before replaying: nothing can slip between the two (one event loop).
        self.watches.append(w)
        try:
            for rv, res, kind, o in list(self.history):
                if res == resource and rv > since and self._visible(w, o):
                    await send({"type": kind, "object": o})
            timeout = float(request.query.get("timeoutSeconds") or 300)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                try:
                    what, arg = await asyncio.wait_for(w.queue.get(),
                                                       max(0.0, deadline - loop.time()))
                except TimeoutError:
                    break
                if what == "close":
                    break
                if what == "event":
                    await send(arg)
                elif what == "bookmark":
                    await send({"type": "BOOKMARK", "object": {
                        "kind": r.kind, "apiVersion": r.api_version,
                        "metadata": {"resourceVersion": str(arg)}}})
                elif what == "gone":
                    await send(gone)
                    break
                elif what == "raw":
                    await resp.write(arg)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.watches.remove(w)
        return resp

    async def _token_review(self, request: web.Request) -> web.Response:
        refused = self._admit(request, "POST")
        if refused is not None:
            return refused
        try:
            body = await request.json()
            spec = body["spec"]
            token = spec["token"]
        except (ValueError, KeyError, TypeError):
            return self._status(400, "not a TokenReview with spec.token")
        wanted = list(spec.get("audiences") or API_AUDIENCES)
        status: Obj
        known = self.tokens.get(token)
        if known is None:
            status = {"user": {}, "error": "[invalid bearer token, square/go-jose: error in "
                                           "cryptographic primitive]"}
        elif not set(wanted) & set(known[0]):
            status = {"user": {}, "error": f"[invalid bearer token, token audiences "
                                           f"{json.dumps(list(known[0]))} is invalid for the "
                                           f"target audiences {json.dumps(wanted)}]"}
        else:
            status = {"authenticated": True, "user": copy.deepcopy(known[1]),
                      "audiences": [a for a in wanted if a in known[0]]}
        return web.json_response({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                                  "metadata": {"creationTimestamp": None}, "spec": spec,
                                  "status": status}, status=201)

    async def _patch_node(self, request: web.Request, name: str) -> web.Response:
        self.requests.append((request.method, request.path, dict(request.query)))
        body = await request.json()
        self.patches.append({"resource": "nodes", "name": name,
                             "content_type": request.content_type, "body": body})
        failed = self._failure(request)
        if failed is not None:
            return failed
        if self.on_node_patch is not None:
            hook, self.on_node_patch = self.on_node_patch, None
            hook()  # someone else changes the node just before our patch lands
        target = self.find("nodes", name)
        if target is None:
            return self._status(404, "node not found")
        if request.content_type != "application/json-patch+json":
            return self._status(415, f"unexpected content type {request.content_type}")
        try:
            patched = json_patch(target, body)
        except PatchTestFailed as exc:
            return self._status(422, f"the server rejected our request: {exc}")
        except (KeyError, IndexError, ValueError) as exc:
            return self._status(400, f"bad patch: {exc}")
        return web.json_response(self.put("nodes", patched))

    async def _patch_pod(self, request: web.Request, ns: str, name: str) -> web.Response:
        self.requests.append((request.method, request.path, dict(request.query)))
        body = await request.json()
        self.patches.append({"resource": "pods", "namespace": ns, "name": name,
                             "content_type": request.content_type, "body": body})
        failed = self._failure(request)
        if failed is not None:
            return failed
        target = self.find("pods", name, ns)
        if target is None:
            return self._status(404, "pod not found")
        if request.content_type not in ("application/strategic-merge-patch+json",
                                        "application/merge-patch+json"):
            return self._status(415, f"unexpected content type {request.content_type}")
        new = copy.deepcopy(target)
        annotations = new["metadata"].setdefault("annotations", {})
        for k, v in ((body.get("metadata") or {}).get("annotations") or {}).items():
            if v is None:
                annotations.pop(k, None)
            else:
                annotations[k] = v
        return web.json_response(self.put("pods", new))

    async def _pod_proxy(self, request: web.Request, ns: str, name: str, port: str | None,
                         rest: str | None) -> web.Response:
        """GET on the pod's own port, as the API server's pods/proxy subresource does."""
        import aiohttp

        refused = self._admit(request, "GET")
        if refused is not None:
            return refused
        target = self.find("pods", name, ns)
        if target is None:
            return self._status(404, f'pods "{name}" not found')
        ip = (target.get("status") or {}).get("podIP") or ""
        if not ip:
            return self._status(503, f"pod {ns}/{name} has no IP yet")
        host = f"[{ip}]" if ":" in ip else ip
        url = f"http://{host}:{port or 80}{rest or '/'}"
        try:
            async with aiohttp.ClientSession() as session, session.get(
                    url, params=request.query, timeout=aiohttp.ClientTimeout(total=5)) as r:
                body = await r.read()
                return web.Response(status=r.status, body=body,
                                    content_type=r.content_type or "text/plain")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return self._status(503, f"error trying to reach service: dial tcp "
                                     f"{host}:{port or 80}: {exc}")

    # -- test helpers --------------------------------------------------------------------------

    def pod_patches(self, name: str) -> list[dict[str, Any]]:
        return [p["body"] for p in self.patches if p["resource"] == "pods" and p["name"] == name]

    def annotation(self, uid: str) -> str | None:
        value = self.objects["pods"][uid]["metadata"].get("annotations", {}).get(
            "meshnode.io/redirection")
        return value if isinstance(value, str) else None


class PatchTestFailed(Exception):
    pass


def _walk(doc: Any, path: str) -> tuple[Any, str]:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]
    for p in parts[:-1]:
        doc = doc[int(p)] if isinstance(doc, list) else doc[p]
    return doc, parts[-1]


def json_patch(obj: Obj, ops: list[dict[str, Any]]) -> Obj:
    """RFC 6902, the ops the agent uses; all or nothing."""
    doc = copy.deepcopy(obj)
    for op in ops:
        parent, last = _walk(doc, op["path"])
        kind = op["op"]
        if kind == "test":
            here = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if here != op["value"]:
                raise PatchTestFailed(f"test failed at {op['path']}")
        elif kind == "remove":
            if isinstance(parent, list):
                del parent[int(last)]
            else:
                del parent[last]
        elif kind in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op["value"])
                elif kind == "add":
                    parent.insert(int(last), op["value"])
                else:
                    parent[int(last)] = op["value"]
            else:
                parent[last] = op["value"]
        else:
            raise ValueError(f"unsupported op {kind}")
    return doc


class ThreadedFakeApi:
    """The same server on its own thread and loop, for tests that block (a real agent
    process talking to it). With `netns` (a path) that thread runs inside that network
    namespace: the server listens there and its pod proxy dials pods from there, as an API
    server on the cluster network does (clients then connect from inside it too)."""

    def __init__(self, resources: Iterable[Resource] = AGENT_RESOURCES,
                 netns: str | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.api = FakeApi(resources)
        self.netns = netns
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if self.netns is None:
            self.loop.run_forever()
            return
        from core.netns import entered

        with entered(self.netns):  # this thread only: setns(2) is per thread
            self.loop.run_forever()

    def __enter__(self) -> ThreadedFakeApi:
        self._thread.start()
        self.call_async(self.api.start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.call_async(self.api.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def call_async(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        async def run() -> T:
            return fn(*args, **kwargs)
        result: T = self.call_async(run())
        return result
