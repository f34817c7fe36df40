"""A local HTTP server that speaks the Kubernetes list/watch protocol for pods, namespaces and
nodes, as far as the agent uses it (there is no API server on this machine).

- one global resourceVersion counter, stamped on every change, as etcd does;
- list: `{"kind": "...List", "metadata": {"resourceVersion"}, "items"}`, pods filtered by
  `fieldSelector=spec.nodeName=<node>`;
- watch (`?watch=true&resourceVersion=N`): a chunked stream of JSON lines
  (ADDED/MODIFIED/DELETED/BOOKMARK/ERROR), replaying history after N first; bookmarks only
  when the client asked with `allowWatchBookmarks=true`; ends after `timeoutSeconds`;
- a resourceVersion older than the last `compact()` gets 410 Gone: an ERROR event with a
  Status (what the API server sends on a started watch) or, with `gone_as_http`, the HTTP
  status itself;
- PATCH of a pod (strategic merge / merge: annotations) and of a node (JSON patch with
  `test`, `add`, `remove`, `replace`; a failed test is a 422, as in the API server); every
  patch is recorded.
Tests change the world with `put`, `delete`, `compact`, `bookmark`, `inject`, `close_watches`,
`fail_next`; with `notify=False` a change is not sent to live watches (it happened while
the client was away).
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")
KINDS = {"pods": "Pod", "namespaces": "Namespace", "nodes": "Node",
         "daemonsets": "DaemonSet"}


@dataclass
class Watch:
    resource: str
    node: str | None
    bookmarks: bool
    queue: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)


def pod(name: str, namespace: str = "default", node: str = "node1", ip: str = "10.0.0.1",
        labels: dict[str, str] | None = None, host_network: bool = False,
        phase: str = "Running", uid: str = "") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "uid": uid or str(uuid.uuid4()),
                         "labels": labels or {}, "annotations": {}},
            "spec": {"nodeName": node, "hostNetwork": host_network},
            "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}] if ip else []}}


def namespace(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": f"ns-{name}", "labels": labels or {}}}


def daemonset(name: str, namespace: str, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": f"uid-ds-{name}"}
    if deleting:
        meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": meta, "spec": {}}


def node(name: str, taints: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": f"node-{name}"}, "spec": {"taints": taints}}


class FakeApi:
    def __init__(self) -> None:
        self.rv = 100
        self.objects: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in KINDS}
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []
        self.compacted = 0
        self.gone_as_http = False
        self.watches: list[Watch] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.patches: list[dict[str, Any]] = []
        self.failures: list[tuple[str, int]] = []  # (method path prefix, status), FIFO
        self.on_node_patch: Callable[[], None] | None = None  # a concurrent writer
        self.port = 0
        self._runner: web.AppRunner | None = None

    # -- server --------------------------------------------------------------------------------

    async def start(self) -> FakeApi:
        app = web.Application()
        app.router.add_get("/api/v1/pods", self._collection("pods"))
        app.router.add_get("/api/v1/namespaces", self._collection("namespaces"))
        app.router.add_get("/api/v1/nodes/{name}", self._get_node)
        app.router.add_get("/apis/apps/v1/namespaces/{ns}/daemonsets/{name}",
                           self._get_daemonset)
        app.router.add_patch("/api/v1/nodes/{name}", self._patch_node)
        app.router.add_patch("/api/v1/namespaces/{ns}/pods/{name}", self._patch_pod)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        self.close_watches()
        if self._runner is not None:
            await self._runner.cleanup()

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

    def _stamp(self, resource: str, kind: str, obj: dict[str, Any], notify: bool) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        snap = copy.deepcopy(obj)
        self.history.append((self.rv, resource, kind, snap))
        if notify:
            for w in self.watches:
                if w.resource == resource and self._visible(w.node, snap):
                    w.queue.put_nowait(("event", {"type": kind, "object": snap}))

    @staticmethod
    def _visible(node: str | None, obj: dict[str, Any]) -> bool:
        return node is None or (obj.get("spec") or {}).get("nodeName") == node

    def put(self, resource: str, obj: dict[str, Any], notify: bool = True) -> dict[str, Any]:
        uid = obj["metadata"]["uid"]
        kind = "MODIFIED" if uid in self.objects[resource] else "ADDED"
        obj = copy.deepcopy(obj)
        self.objects[resource][uid] = obj
        self._stamp(resource, kind, obj, notify)
        return obj

    def get(self, resource: str, uid: str) -> dict[str, Any]:
        return self.objects[resource][uid]

    def relabel(self, resource: str, uid: str, labels: dict[str, str],
                notify: bool = True) -> None:
        obj = copy.deepcopy(self.objects[resource][uid])
        obj["metadata"]["labels"] = labels
        self.put(resource, obj, notify)

    def delete(self, resource: str, uid: str, notify: bool = True) -> None:
        obj = self.objects[resource].pop(uid)
        self._stamp(resource, "DELETED", obj, notify)

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

    def watch_count(self, resource: str) -> int:
        return sum(1 for m, p, q in self.requests if p.endswith(resource) and "watch" in q)

    # -- handlers ------------------------------------------------------------------------------

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

    def _collection(self, resource: str) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.StreamResponse:
            self.requests.append((request.method, request.path, dict(request.query)))
            failed = self._failure(request)
            if failed is not None:
                return failed
            selector = request.query.get("fieldSelector", "")
            node_name = selector.split("=", 1)[1] if selector.startswith("spec.nodeName=") \
                else None
            if request.query.get("watch") in ("true", "True", "1"):
                return await self._watch(request, resource, node_name)
            items = [copy.deepcopy(o) for o in self.objects[resource].values()
                     if self._visible(node_name, o)]
            return web.json_response({"kind": KINDS[resource] + "List", "apiVersion": "v1",
                                      "metadata": {"resourceVersion": str(self.rv)},
                                      "items": items})
        return handle

    async def _watch(self, request: web.Request, resource: str,
                     node_name: str | None) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or 0)
        gone = {"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired",
            "code": 410, "message": f"too old resource version: {since} ({self.compacted})"}}
        if since and since < self.compacted and self.gone_as_http:
            return self._status(410, gone["object"]["message"])  # type: ignore[index]
        w = Watch(resource, node_name, request.query.get("allowWatchBookmarks") in (
            "true", "True", "1"))
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
            for rv, res, kind, obj in list(self.history):
                if res == resource and rv > since and self._visible(node_name, obj):
                    await send({"type": kind, "object": obj})
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
                        "kind": KINDS[resource], "apiVersion": "v1",
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

    async def _get_node(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path, dict(request.query)))
        failed = self._failure(request)
        if failed is not None:
            return failed
        for obj in self.objects["nodes"].values():
            if obj["metadata"]["name"] == request.match_info["name"]:
                return web.json_response(obj)
        return self._status(404, "node not found")

    async def _get_daemonset(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path, dict(request.query)))
        failed = self._failure(request)
        if failed is not None:
            return failed
        for obj in self.objects["daemonsets"].values():
            meta = obj["metadata"]
            if (meta["name"], meta.get("namespace")) == (request.match_info["name"],
                                                         request.match_info["ns"]):
                return web.json_response(obj)
        return self._status(404, "daemonset not found")

    async def _patch_node(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path, dict(request.query)))
        body = await request.json()
        self.patches.append({"resource": "nodes", "name": request.match_info["name"],
                             "content_type": request.content_type, "body": body})
        failed = self._failure(request)
        if failed is not None:
            return failed
        if self.on_node_patch is not None:
            hook, self.on_node_patch = self.on_node_patch, None
            hook()  # someone else changes the node just before our patch lands
        target = next((o for o in self.objects["nodes"].values()
                       if o["metadata"]["name"] == request.match_info["name"]), None)
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

    async def _patch_pod(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path, dict(request.query)))
        body = await request.json()
        ns, name = request.match_info["ns"], request.match_info["name"]
        self.patches.append({"resource": "pods", "namespace": ns, "name": name,
                             "content_type": request.content_type, "body": body})
        failed = self._failure(request)
        if failed is not None:
            return failed
        target = next((o for o in self.objects["pods"].values()
                       if o["metadata"]["name"] == name and o["metadata"]["namespace"] == ns),
                      None)
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


def json_patch(obj: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
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
    process talking to it)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.api = FakeApi()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

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
