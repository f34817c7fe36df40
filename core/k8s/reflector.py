"""List-then-watch for one resource, kept in a local cache (client-go's reflector, small).

Protocol, as the API server speaks it:
- list, remember the list's `metadata.resourceVersion`, watch from there with
  `allowWatchBookmarks`; every event's object carries a newer resourceVersion, and BOOKMARK
  events carry nothing else (they exist so a quiet watch can resume from a recent version);
- a watch ends normally after `timeoutSeconds`: watch again from the last version (no list);
- `410 Gone` (an ERROR event with code 410, or the HTTP status) means our version was
  compacted away: list again and diff the new list against the cache, so the handler sees
  the adds, updates and deletes it missed (a pod deleted meanwhile is released);
- any other failure: back off (exponential, jittered, capped) and resume. The cache is kept
  as it was: an unreachable API server deletes nothing.
A bad line or object is logged, counted and skipped: it never stops the watch.

What identifies an object is the caller's `key` (the agent: the uid, since a pod recreated
under the same name is another pod; the control plane: namespace and name, as its store).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable, Iterator
from typing import Any, Generic, TypeVar

import structlog

from core.backoff import Backoff
from core.k8s import metrics
from core.k8s.client import ApiError, Listing

log = structlog.get_logger("k8s.watch")

K = TypeVar("K", bound=Hashable)
Obj = dict[str, Any]
# (event type ADDED|MODIFIED|DELETED, the object, the cached object it replaces or None)
Handler = Callable[[str, Obj, Obj | None], None]
# After a (re)list, instead of the diff as events: every current object (an iterable read
# once; without a cache, each object is the handler's alone once read).
RelistHandler = Callable[[Iterable[Obj]], None]


def _meta(obj: Any) -> dict[str, Any] | None:
    if not isinstance(obj, dict):
        return None
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else None


def uid_key(obj: Any) -> str | None:
    """The object's uid, or None if it is not a usable object (no uid or no name)."""
    meta = _meta(obj)
    if meta is None:
        return None
    uid, name = meta.get("uid"), meta.get("name")
    if not isinstance(uid, str) or not uid or not isinstance(name, str) or not name:
        return None
    return uid


def name_key(obj: Any, namespaced: bool = True) -> tuple[str, str] | None:
    """(namespace, name) ("" for a cluster-scoped object), or None if it is not a usable
    object (no name; a namespaced object without its namespace)."""
    meta = _meta(obj)
    if meta is None:
        return None
    ns, name = meta.get("namespace", ""), meta.get("name")
    if not isinstance(name, str) or not name or not isinstance(ns, str) or \
            (namespaced and not ns):
        return None
    return (ns if namespaced else "", name)


def _rv(obj: Obj) -> str:
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    return rv if isinstance(rv, str) else ""


class _Expired(Exception):
    pass


def _drain(objs: dict[Any, Obj]) -> Iterator[Obj]:
    """The values of `objs`, each dropped from it as it is read: a big list is not held
    whole while its handler converts it (what the handler keeps does not end up between
    the holes the list leaves in the heap)."""
    for key in list(objs):
        yield objs.pop(key)


class Reflector(Generic[K]):
    """Call `run()` in a task; `synced` is set after the first list, `cache` holds the
    current objects by key.

    `handler` hears every change as an event. After a list, it hears the difference to the
    cache (ADDED, MODIFIED for a new resourceVersion, DELETED), unless `on_relist` is given:
    then that gets the whole new list instead (a store that diffs by itself).
    `list_fn` gives a new Listing each call, whose items the reflector consumes (empties).
    `transform` is applied to every object before it is cached (drop what nobody reads).
    `cache=False` keeps none (`cache` stays empty, `old` is None): for a handler that keeps
    the objects itself and an `on_relist` that diffs by itself, a second copy of every
    object's key is only memory.
    `absent_ok`: a 404 on the list means the resource is not served (a CRD not installed):
    it counts as an empty list, and the list is retried every `absent_recheck` seconds.
    """

    def __init__(self, resource: str, list_fn: Callable[[], Awaitable[Listing]],
                 watch_fn: Callable[[str, int], AsyncIterator[bytes]], handler: Handler,
                 watch_timeout_seconds: int = 300, backoff: Backoff | None = None, *,
                 key: Callable[[Any], K | None],
                 transform: Callable[[Obj], Obj] | None = None,
                 on_relist: RelistHandler | None = None, cache: bool = True,
                 absent_ok: bool = False, absent_recheck: float = 30.0) -> None:
        if not cache and on_relist is None:
            raise ValueError("without a cache, a relist needs on_relist to diff")
        self.resource = resource
        self._list = list_fn
        self._watch = watch_fn
        self._handler = handler
        self._key = key
        self._transform = transform
        self._on_relist = on_relist
        self.watch_timeout = watch_timeout_seconds
        self.backoff = backoff or Backoff(0.2, 30.0)
        self.absent_ok = absent_ok
        self.absent_recheck = absent_recheck
        self.absent = False  # the last list was a 404 (with absent_ok)
        self.cache: dict[K, Obj] = {}
        self._keep = cache
        self.resource_version = ""
        self.synced = asyncio.Event()  # set after the first successful list
        self._listed_at = 0.0

    def _emit(self, kind: str, obj: Obj, old: Obj | None) -> None:
        try:
            self._handler(kind, obj, old)
        except Exception:  # the handler's bug must not stop the watch
            log.exception("k8s_handler_failed", resource=self.resource, type=kind)

    async def run(self) -> None:
        reason = "start"
        while True:
            try:
                if reason:
                    await self._relist(reason)
                    reason = ""
                if self.absent:
                    await asyncio.sleep(self.absent_recheck)
                    reason = "absent"
                    continue
                await self._watch_once()
            except asyncio.CancelledError:
                raise
            except _Expired:
                reason = "expired"
                if time.monotonic() - self._listed_at < 1.0:
                    # Expired again right after a list: a server whose watch cache lags
                    # its lists. Relisting in a tight loop would only add load.
                    await asyncio.sleep(self.backoff.next())
                continue
            except ApiError as exc:
                metrics.WATCH_ERRORS.labels(self.resource).inc()
                if exc.status == 410:
                    reason = "expired"
                elif exc.status == 404 and self.absent_ok:
                    reason = reason or "absent"  # the CRD went away? the list will say
                delay = self.backoff.next()
                log.warning("k8s_watch_failed", resource=self.resource, error=str(exc),
                            retry_in=round(delay, 2))
                await asyncio.sleep(delay)
            except Exception as exc:
                metrics.WATCH_ERRORS.labels(self.resource).inc()
                delay = self.backoff.next()
                log.exception("k8s_watch_crashed", resource=self.resource,
                              error=f"{type(exc).__name__}: {exc}", retry_in=round(delay, 2))
                await asyncio.sleep(delay)

    async def _list_or_absent(self) -> Listing | None:
        try:
            return await self._list()
        except ApiError as exc:
            if exc.status != 404 or not self.absent_ok:
                raise
        if not self.absent:
            log.warning("k8s_resource_absent", resource=self.resource,
                        recheck_in=self.absent_recheck)
        return None

    async def _relist(self, reason: str) -> None:
        listing = await self._list_or_absent()
        self.absent = listing is None
        rv = listing.resource_version if listing is not None else None
        new = self._transformed(listing.items if listing is not None else [])
        # The list as the API server sent it is gone before the handler runs (its items
        # were emptied into `new`): a big cluster's raw objects do not outlive the
        # transform, nor share the heap with what the handler keeps.
        listing = None
        old, self.cache = self.cache, new if self._keep else {}
        self._listed_at = time.monotonic()
        if rv is not None:
            metrics.RELISTS.labels(self.resource, reason).inc()
            self.resource_version = rv
            log.info("k8s_listed", resource=self.resource, reason=reason, items=len(new),
                     resource_version=self.resource_version)
        else:
            self.resource_version = ""
        if self._on_relist is not None:
            try:
                self._on_relist(new.values() if self._keep else _drain(new))
            except Exception:
                log.exception("k8s_handler_failed", resource=self.resource, type="RELIST")
        else:
            # The diff is what makes a relist after 410 correct: whatever happened while we
            # were away reaches the handler as ordinary events.
            for key, was in old.items():
                if key not in new:
                    self._emit("DELETED", was, was)
            for key, obj in new.items():
                before = old.get(key)
                if before is None:
                    self._emit("ADDED", obj, None)
                elif _rv(before) != _rv(obj) or not _rv(obj):
                    self._emit("MODIFIED", obj, before)
        self.synced.set()

    def _transformed(self, items: list[Obj]) -> dict[K, Obj]:
        """The listed objects by key, transformed; `items` is emptied on the way (each raw
        object is dropped as soon as its transform is made)."""
        new: dict[K, Obj] = {}
        items.reverse()
        while items:
            item = items.pop()
            key = self._key(item)
            if key is None:
                metrics.WATCH_EVENTS.labels(self.resource, "MALFORMED").inc()
                log.warning("k8s_bad_object", resource=self.resource, where="list",
                            object=str(item)[:200])
                continue
            new[key] = self._transform(item) if self._transform else item
        return new

    async def _watch_once(self) -> None:
        started = time.monotonic()
        received = 0
        async for line in self._watch(self.resource_version, self.watch_timeout):
            if not line.strip():
                continue
            received += 1
            self._line(line)
            self.backoff.reset()
        if not received and time.monotonic() - started < 1.0:
            # A server that closes every watch at once would have us spin: slow down.
            await asyncio.sleep(self.backoff.next())

    def _line(self, line: bytes) -> None:
        try:
            event = json.loads(line)
            kind, obj = event["type"], event["object"]
            if not isinstance(kind, str) or not isinstance(obj, dict):
                raise TypeError("type/object of the wrong type")
        except (ValueError, KeyError, TypeError) as exc:
            metrics.WATCH_EVENTS.labels(self.resource, "MALFORMED").inc()
            log.warning("k8s_bad_event", resource=self.resource, error=str(exc),
                        line=line[:200].decode(errors="replace"))
            return
        if kind in ("BOOKMARK", "ERROR"):
            metrics.WATCH_EVENTS.labels(self.resource, kind).inc()
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                log.info("k8s_watch_expired", resource=self.resource,
                         resource_version=self.resource_version)
                raise _Expired
            raise ApiError(code if isinstance(code, int) else 0,
                           f"watch error: {str(obj.get('message', obj))[:200]}")
        if kind == "BOOKMARK":
            rv = _rv(obj)
            if rv:
                self.resource_version = rv
            return
        key = self._key(obj)
        if key is None or kind not in ("ADDED", "MODIFIED", "DELETED"):
            # Skipped, so counted as MALFORMED (not as its type): the counter says what the
            # cache did not take.
            metrics.WATCH_EVENTS.labels(self.resource, "MALFORMED").inc()
            log.warning("k8s_bad_event", resource=self.resource, type=kind,
                        error="unknown type or object without metadata.name/uid/namespace",
                        line=line[:200].decode(errors="replace"))
            return
        metrics.WATCH_EVENTS.labels(self.resource, kind).inc()
        rv = _rv(obj)
        if rv:
            self.resource_version = rv
        if self._transform is not None:
            obj = self._transform(obj)
        old = self.cache.get(key)
        if kind == "DELETED":
            self.cache.pop(key, None)
        elif self._keep:
            self.cache[key] = obj
        self._emit(kind, obj, old)
