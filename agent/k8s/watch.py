"""List-then-watch for one resource, kept in a local cache (client-go's reflector, small).

Protocol, as the API server speaks it:
- list, remember the list's `metadata.resourceVersion`, watch from there with
  `allowWatchBookmarks`; every event's object carries a newer resourceVersion, and BOOKMARK
  events carry nothing else (they exist so a quiet watch can resume from a recent version);
- a watch ends normally after `timeoutSeconds`: watch again from the last version (no list);
- `410 Gone` (an ERROR event with code 410, or the HTTP status) means our version was
  compacted away: list again and diff the new list against the cache, so the handler sees
  the adds, updates and deletes it missed (a pod deleted meanwhile is released);
- any other failure: back off (exponential, jittered, capped) and resume.
A bad line or object is logged, counted and skipped: it never stops the watch.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog

from agent.k8s import metrics
from agent.k8s.api import ApiError, Listing
from core.backoff import Backoff

log = structlog.get_logger("k8s.watch")

# (event type ADDED|MODIFIED|DELETED, the object, the cached object it replaces or None)
Handler = Callable[[str, dict[str, Any], dict[str, Any] | None], None]


def object_key(obj: Any) -> str | None:
    """The object's uid, or None if it is not a usable object. The uid, not the name: a pod
    recreated under the same name (a StatefulSet) is a different pod."""
    if not isinstance(obj, dict):
        return None
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return None
    uid, name = meta.get("uid"), meta.get("name")
    if not isinstance(uid, str) or not uid or not isinstance(name, str) or not name:
        return None
    return uid


def _rv(obj: dict[str, Any]) -> str:
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    return rv if isinstance(rv, str) else ""


class _Expired(Exception):
    pass


class Informer:
    def __init__(self, resource: str, list_fn: Callable[[], Awaitable[Listing]],
                 watch_fn: Callable[[str, int], AsyncIterator[bytes]], handler: Handler,
                 watch_timeout_seconds: int = 300, backoff: Backoff | None = None) -> None:
        self.resource = resource
        self._list = list_fn
        self._watch = watch_fn
        self._handler = handler
        self.watch_timeout = watch_timeout_seconds
        self.backoff = backoff or Backoff(0.2, 30.0)
        self.cache: dict[str, dict[str, Any]] = {}
        self.resource_version = ""
        self.synced = asyncio.Event()  # set after the first successful list
        self._listed_at = 0.0

    def _emit(self, kind: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
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

    async def _relist(self, reason: str) -> None:
        listing = await self._list()
        metrics.RELISTS.labels(self.resource, reason).inc()
        new: dict[str, dict[str, Any]] = {}
        for item in listing.items:
            key = object_key(item)
            if key is None:
                metrics.WATCH_EVENTS.labels(self.resource, "MALFORMED").inc()
                log.warning("k8s_bad_object", resource=self.resource, where="list",
                            object=str(item)[:200])
                continue
            new[key] = item
        old, self.cache = self.cache, new
        self.resource_version = listing.resource_version
        self._listed_at = time.monotonic()
        log.info("k8s_listed", resource=self.resource, reason=reason, items=len(new),
                 resource_version=self.resource_version)
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
        metrics.WATCH_EVENTS.labels(self.resource, kind if kind in (
            "ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR") else "MALFORMED").inc()
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
        key = object_key(obj)
        if key is None or kind not in ("ADDED", "MODIFIED", "DELETED"):
            log.warning("k8s_bad_event", resource=self.resource, type=kind,
                        error="unknown type or object without metadata.name/uid",
                        line=line[:200].decode(errors="replace"))
            return
        rv = _rv(obj)
        if rv:
            self.resource_version = rv
        old = self.cache.get(key)
        if kind == "DELETED":
            self.cache.pop(key, None)
        else:
            self.cache[key] = obj
        self._emit(kind, obj, old)
