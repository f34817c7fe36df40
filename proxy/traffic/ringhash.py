"""Consistent hashing on the source IP: Envoy's ring hash. Each endpoint gets points on a
64-bit ring (the hash of "uid_i", i = 0, 1, ...); a key goes to the first point at or after
its hash, wrapping around.

Each of n endpoints gets ceil(minimum_ring_size / n) points, as in Envoy. A removed endpoint's
keys go to the endpoints that follow its points; since n changes, the endpoints that stay also
gain (or, on an addition, lose) a few points at the end of their sequence, which moves about
another 1/n of the keys between them. So a membership change moves about 2/n of the keys and
leaves the rest where they were.

The hash is blake2b's first 8 bytes: stable across processes and restarts (Python's hash() is
salted), which Envoy's xxHash also is; the exact values differ from Envoy's, the property
does not. Rings are built once per candidate set (`RingCache`), O(points log points)."""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Sequence

from core.mesh.model import Workload

# Envoy's RingHashLbConfig.maximum_ring_size default.
MAX_RING_SIZE = 8 * 1024 * 1024


def hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class Ring:
    def __init__(self, endpoints: Sequence[Workload], minimum_size: int) -> None:
        if not endpoints:
            raise ValueError("a ring needs endpoints")
        per = max(1, min(math.ceil(minimum_size / len(endpoints)),
                         MAX_RING_SIZE // len(endpoints)))
        points = sorted((hash64(f"{w.uid}_{i}"), n)
                        for n, w in enumerate(endpoints) for i in range(per))
        self._hashes = [h for h, _ in points]
        self._owners = [endpoints[n] for _, n in points]

    def __len__(self) -> int:
        return len(self._hashes)

    def pick(self, key_hash: int) -> Workload:
        i = bisect.bisect_left(self._hashes, key_hash)
        return self._owners[i if i < len(self._owners) else 0]


class RingCache:
    """One ring per candidate set and size; a few sets live at once (ejections, locality)."""

    def __init__(self, limit: int = 8) -> None:
        self._rings: dict[tuple[tuple[str, ...], int], Ring] = {}
        self._limit = limit

    def ring(self, endpoints: Sequence[Workload], minimum_size: int) -> Ring:
        key = (tuple(w.uid for w in endpoints), minimum_size)
        ring = self._rings.get(key)
        if ring is None:
            if len(self._rings) >= self._limit:
                self._rings.pop(next(iter(self._rings)))
            ring = self._rings[key] = Ring(endpoints, minimum_size)
        return ring
