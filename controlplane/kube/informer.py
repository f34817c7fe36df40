"""The API-server source: `--kubeconfig FILE`, or the pod's service account in a cluster.

One reflector (core/k8s/reflector.py) per kind of `objects.KINDS`, over the kind's
collection path for all namespaces, feeds the `ObjectStore`:
- a list (the first, and the relist after 410 Gone) ends in `ObjectStore.replace`: objects
  gone meanwhile are deleted, the others put, and the store tells its listeners only what
  really changed (a relist of an unchanged cluster pushes nothing);
- watch events are `put` (ADDED, MODIFIED) or `delete` (DELETED);
- failures (API server unreachable, 5xx, 403) back off and retry with the last state kept:
  nothing is ever deleted because the API server could not be asked;
- an Istio kind whose CRD is not installed (404) counts as empty and is asked again every
  `absent_recheck` seconds, so a cluster without Istio's CRDs still becomes ready.
`synced()` (and `ready`) once every kind has been listed once: serve only then, or agents
would be pushed a partial mesh.

Objects are stored with `apiVersion` and `kind` set (the API server omits them on list
items of built-in kinds) and only with the fields the conversion reads (the store's
projection, controlplane/kube/objects.py), so both sources (this and the manifests
directory) fill the store alike and a relist compares equal to what the watch delivered.
The reflectors keep no cache of their own: the store is the one copy of the cluster.

Every API call the control plane makes is a list or a watch of one of these collections, or
one of the CA's token checks (controlplane/kube/tokenreview.py: create a TokenReview, get a
token's bound pod; they use this connection): `CALLS` is that table, and
deploy/controlplane-rbac.yaml grants exactly it (tests/controlplane/kube/test_rbac.py
compares the two).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import structlog

from controlplane import heap
from controlplane.kube import tokenreview
from controlplane.kube.objects import KINDS, Kind, Obj, ObjectStore, Packed, packed
from core.k8s.client import ApiCall, ApiError, KubeClient
from core.k8s.client import in_cluster as in_cluster
from core.k8s.reflector import Reflector, name_key

log = structlog.get_logger("controlplane.kube.informer")

VERBS = ("list", "watch")
LARGE_LIST = 1000  # objects: a list this long is large transient work (controlplane/heap.py)
# kind -> the RBAC permissions its reflector needs, and "TokenReview" -> the CA's token
# checks; nothing else is ever called.
CALLS: dict[str, tuple[ApiCall, ...]] = {
    **{k.kind: tuple(ApiCall(v, k.group, k.plural) for v in VERBS) for k in KINDS},
    "TokenReview": tokenreview.CALLS}

Key = tuple[str, str]


def resource_name(kind: Kind) -> str:
    """How logs and metrics name a kind's collection: `pods`, `serviceentries.networking.istio.io`
    (kubectl's full resource name)."""
    return f"{kind.plural}.{kind.group}" if kind.group else kind.plural


def absent_ok(kind: Kind) -> bool:
    """A kind that may legitimately not be served: Istio's CRDs (not installed)."""
    return kind.group.endswith(".istio.io")


def slim(kind: Kind) -> Callable[[Any], Any]:
    """The object as stored: apiVersion and kind set, only the fields the conversion reads
    (`objects.project`: managedFields, container specs, status timestamps dropped), packed
    (`objects.Packed`); the original is not changed. Made as each object is read (a list's
    as its page arrives), so a big list's raw objects are dropped before the next page, and
    it is held packed until the store has it. An unusable object (no name, not a mapping)
    is left as it is, for the reflector to report."""
    def transform(obj: Any) -> Any:
        if isinstance(obj, Packed) or name_key(obj, kind.namespaced) is None:
            return obj
        return packed(kind, {**obj, "apiVersion": kind.api_version, "kind": kind.kind})
    return transform


class KubeInformers:
    """The reflectors of every kind, feeding one store. `start()`, then `await
    wait_synced()` (or poll `synced()`); `stop()` ends them (and closes the client if
    `connect` made it)."""

    def __init__(self, client: KubeClient, store: ObjectStore, *,
                 kinds: Iterable[Kind] = KINDS, watch_timeout_seconds: int = 300,
                 absent_recheck: float = 30.0) -> None:
        self.client = client
        self.store = store
        self.kinds = tuple(kinds)
        self.reflectors: dict[str, Reflector[Key]] = {
            k.kind: self._reflector(k, watch_timeout_seconds, absent_recheck)
            for k in self.kinds}
        self.ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._owns_client = False

    @classmethod
    async def connect(cls, kubeconfig: str, store: ObjectStore,
                      **kw: Any) -> KubeInformers:
        """From a kubeconfig file, or ("") the pod's service account (see `in_cluster()`).
        A bad kubeconfig or missing token raises here, before anything runs."""
        informers = cls(await KubeClient.connect(kubeconfig), store, **kw)
        informers._owns_client = True
        return informers

    def _reflector(self, kind: Kind, watch_timeout: int,
                   absent_recheck: float) -> Reflector[Key]:
        client, store, path = self.client, self.store, kind.path

        def key(obj: Any) -> Key | None:
            if isinstance(obj, Packed):  # listed: made by `slim` as its page arrived
                return obj.ns, obj.name
            return name_key(obj, kind.namespaced)

        def on_event(event: str, obj: Any, old: Obj | None) -> None:
            if event == "DELETED":
                k = key(obj)
                if k is not None:
                    store.delete(kind, *k)
            else:
                store.put(kind, obj)

        def on_relist(objs: Iterable[Obj]) -> None:
            if store.replace(kind, objs) >= LARGE_LIST:
                heap.trim_soon()  # the list's decoded objects are gone: give their pages back

        def watch(rv: str, timeout: int) -> AsyncIterator[bytes]:
            return client.watch(path, rv, timeout)

        transform = slim(kind)
        return Reflector(resource_name(kind), lambda: client.list(path, each=transform), watch,
                         on_event, watch_timeout, key=key, transform=transform,
                         on_relist=on_relist,
                         cache=False, absent_ok=absent_ok(kind),
                         absent_recheck=absent_recheck)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        log.info("kube_source_started", server=self.client.api_client.configuration.host,
                 kinds=[k.kind for k in self.kinds])
        self._tasks = [asyncio.create_task(r.run(), name=f"kube-{name}")
                       for name, r in self.reflectors.items()]
        self._tasks.append(asyncio.create_task(self._announce(), name="kube-synced"))

    async def _announce(self) -> None:
        for r in self.reflectors.values():
            await r.synced.wait()
        self.ready.set()
        log.info("kube_synced", objects={k.kind: self.store.count(k) for k in self.kinds},
                 absent=[k.kind for k in self.kinds if self.reflectors[k.kind].absent])

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        if self._owns_client:
            await self.client.close()

    def synced(self) -> bool:
        """Every kind has been listed once (or found not served)."""
        return all(r.synced.is_set() for r in self.reflectors.values())

    async def wait_synced(self) -> None:
        await self.ready.wait()


class ListError(Exception):
    """The API server could not be listed (unreachable, refused, a bad kubeconfig)."""


async def list_cluster(kubeconfig: str, kinds: Iterable[Kind] = KINDS) -> dict[Kind, list[Obj]]:
    """Every object of every kind, listed once and whole (apiVersion and kind set), for
    `meshnode controlplane --check`; "" is the pod's service account. A kind that is not
    served (an Istio CRD not installed) is empty. Only `list` calls of CALLS are made."""
    try:
        client = await KubeClient.connect(kubeconfig)
    except Exception as exc:  # ConfigException, OSError: a bad kubeconfig or no token
        raise ListError(f"{kubeconfig or 'in-cluster service account'}: {exc}") from None
    out: dict[Kind, list[Obj]] = {}
    try:
        for kind in kinds:
            try:
                listing = await client.list(kind.path)
            except ApiError as exc:
                if exc.status == 404 and absent_ok(kind):
                    out[kind] = []
                    continue
                raise ListError(f"{kind.path}: {exc}") from None
            out[kind] = [{**o, "apiVersion": kind.api_version, "kind": kind.kind}
                         for o in listing.items]
    finally:
        await client.close()
    return out


__all__ = ["CALLS", "KubeInformers", "ListError", "absent_ok", "in_cluster", "list_cluster",
           "resource_name", "slim"]
