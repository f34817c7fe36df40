"""Sharing of equal immutable values between records.

Strings that repeat across workloads (namespace, service account, node, ...) are interned
with `sys.intern`, and equal small tuples (a deployment's service/port lists, a locality)
are shared through an `Interner`: that, more than the record layout, is what keeps a
100k-workload state under 1 KiB per workload.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, TypeVar

H = TypeVar("H", bound=Hashable)


class Interner:
    """Shares equal immutable values. Bounded: cleared when it grows past `limit` entries,
    so values of long-gone resources do not pile up (sharing restarts from the next one)."""

    def __init__(self, limit: int = 200_000) -> None:
        self._seen: dict[Any, Any] = {}
        self._limit = limit

    def __call__(self, v: H) -> H:
        got = self._seen.get(v)
        if got is not None:
            return got  # type: ignore[no-any-return]
        if len(self._seen) >= self._limit:
            self._seen.clear()
        self._seen[v] = v
        return v
