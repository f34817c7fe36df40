"""List-then-watch for one resource, kept in a local cache: core/k8s/reflector.py (shared with
the control plane), keyed as the agent needs it.

The protocol (bookmarks, resuming after `timeoutSeconds`, 410 Gone -> relist and diff,
jittered backoff, bad lines and objects skipped and counted) is documented there. The
agent's caches are keyed by uid, not by name: a pod recreated under the same name (a
StatefulSet) is a different pod.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from core.backoff import Backoff
from core.k8s.client import Listing
from core.k8s.reflector import Handler as Handler
from core.k8s.reflector import Reflector
from core.k8s.reflector import uid_key as object_key


class Informer(Reflector[str]):
    def __init__(self, resource: str, list_fn: Callable[[], Awaitable[Listing]],
                 watch_fn: Callable[[str, int], AsyncIterator[bytes]], handler: Handler,
                 watch_timeout_seconds: int = 300, backoff: Backoff | None = None) -> None:
        super().__init__(resource, list_fn, watch_fn, handler, watch_timeout_seconds, backoff,
                         key=object_key)


__all__ = ["Handler", "Informer", "object_key"]
