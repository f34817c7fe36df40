"""VIPs for ServiceEntry hosts that have no `addresses`, as Istio auto-allocates them: with DNS
capture, the node proxy answers the host name with them and routes connections to them to
the entry's endpoints (ISTIO_META_DNS_AUTO_ALLOCATE, and ztunnel's DNS proxy in ambient).

Which hosts get a pair (services.py decides, as istiod's ShouldV2AutoAllocateIP and the
allocator's keepHost): the entry has no `spec.addresses`, its resolution is not NONE (with
NONE the proxy passes a connection through to the address the app asked for, so an
allocated one would lead nowhere), it is not labelled
`networking.istio.io/enable-autoallocate-ip: "false"`, and the host is not a wildcard
(unless the resolution is DYNAMIC_DNS). Each such host, per namespace that serves it
(the service key `namespace/host`), gets one IPv4 and one IPv6 address, from Istio's ranges
240.240.0.0/16 (class E: never routed outside the pod) and 2001:2::/48 (RFC 5180's
benchmarking range), offset n of both: 240.240.0.0 + n and 2001:2:: + n, n in 1..65534.
Istio's allocator hands out the next free address of both ranges in step, so its pairs
share their offsets too. A host that istiod already allocated for (its addresses in
`status.addresses`, when istiod runs in the same cluster) keeps those (services.py).

How, without state. Istio's allocator (pilot/pkg/controllers/ipallocate) writes each
allocation into the entry's `status.addresses` and never moves it. This control plane writes
nothing back: it may run from manifests, and its replicas must agree without talking to
each other. So an address is a function of the served entries alone:

- each key hashes (BLAKE2b) to a preferred offset;
- keys are placed oldest first (the entry's creationTimestamp, then namespace, name, host),
  each at its preferred offset or, taken, at the next free one (wrapping);
- offsets that a served service holds as its own address (an entry's `addresses`, a
  Service's clusterIP, a status address) are never handed out (Istio's allocator also
  counts addresses in the spec as used).

Two replicas, or a restarted control plane, on the same objects give every key the same
pair. A key moves only when an older entry comes to want its offset (a new entry is the
newest, so it never displaces one: only objects without creation times, as in a manifests
directory, are ordered by name instead) or when the entry that took its preferred offset
goes. With fewer than a few hundred entries a key sits at its preferred offset nearly always
(a hash collision in 65,534 offsets), and the key's name alone gives its address.

The work per change is proportional to the keys placed after the changed one (the newest
entry: one), not to the mesh. With every offset taken a key gets no address, logged.
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime

import structlog

from controlplane.ambient.services import ServiceInfo
from core.mesh.model import Service, Vip

log = structlog.get_logger("controlplane.ambient")

V4 = ipaddress.IPv4Network("240.240.0.0/16")
V6 = ipaddress.IPv6Network("2001:2::/48")
SIZE = 2**16 - 2   # offsets 1..65534: not a range's first address, nor the /16's broadcast
_V4_BASE = int(V4.network_address)
_V6_BASE = int(V6.network_address)

Order = tuple[datetime, str, str, str]   # (created, namespace, name, host)


@dataclass(frozen=True, slots=True)
class Claim:
    """What a served service asks of the allocator: its service without auto-allocated
    VIPs, and its place in the order (None: it wants no VIPs)."""

    service: Service
    order: Order | None


def preferred(key: str) -> int:
    """The offset a key gets unless an older key took it (stable across processes and
    Python versions, unlike hash())."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % SIZE + 1


def addresses(offset: int) -> tuple[str, str]:
    """(IPv4, IPv6) at `offset`."""
    return (str(ipaddress.IPv4Address(_V4_BASE + offset)),
            str(ipaddress.IPv6Address(_V6_BASE + offset)))


def offsets_of(vips: Iterable[Vip]) -> list[int]:
    """The offsets of our ranges that these addresses (or CIDRs) cover."""
    out: list[int] = []
    for v in vips:
        if v.length is None and not v.address.startswith(("240.240.", "2001:2:")):
            continue  # nearly every address (normalized text): no parsing for them
        try:
            net = ipaddress.ip_network(
                v.address if v.length is None else f"{v.address}/{v.length}", strict=False)
        except ValueError:
            continue
        pool = V4 if net.version == 4 else V6
        base = _V4_BASE if net.version == 4 else _V6_BASE
        if not net.overlaps(pool):
            continue
        lo = max(int(net.network_address) - base, 1)
        hi = min(int(net.broadcast_address) - base, SIZE)
        out.extend(range(lo, hi + 1))
    return out


class Allocator:
    """The auto-allocated VIPs of the served services. Changes are staged (`stage`) for a
    batch of hostnames, then `commit` places what they changed and says which services to
    serve anew."""

    def __init__(self) -> None:
        self._sorted: list[tuple[Order, str]] = []   # the keys that want VIPs, in order
        self._order: dict[str, Order] = {}
        self._base: dict[str, Service] = {}           # their services without the VIPs
        self._offset: dict[str, int] = {}             # placed keys -> offset
        self._holder: dict[int, str] = {}             # offset -> placed key
        self._blocked: Counter[int] = Counter()       # offsets served services hold
        self._blocks: dict[str, tuple[int, ...]] = {}  # key -> the offsets it holds
        self._staged: dict[str, Claim | None] = {}
        self._short = False   # every offset was taken at the last placement (logged once)

    def __len__(self) -> int:
        return len(self._offset)

    def stage(self, key: str, claim: Claim | None) -> None:
        """`key` is now served as `claim` (None: no longer served)."""
        self._staged[key] = claim

    def commit(self, network: str) -> list[tuple[str, Service | None]]:
        """Apply the staged changes: the services to serve (with their VIPs), or None to
        stop serving, for every staged key and every key whose VIPs moved."""
        staged, self._staged = self._staged, {}
        start = len(self._sorted)   # placements from this index on are redone
        blocked_changed = False
        for key, claim in staged.items():
            blocks = () if claim is None else tuple(offsets_of(claim.service.vips))
            if blocks != self._blocks.get(key, ()):
                blocked_changed = True
                self._blocked.subtract(self._blocks.pop(key, ()))
                if blocks:
                    self._blocks[key] = blocks
                    self._blocked.update(blocks)
            old = self._order.get(key)
            new = None if claim is None else claim.order
            if old is not None and old != new:
                i = bisect.bisect_left(self._sorted, (old, key))
                del self._sorted[i]
                del self._order[key]
                self._base.pop(key, None)
                start = min(start, i)
                off = self._offset.pop(key, None)
                if off is not None:
                    del self._holder[off]
            if new is not None:
                assert claim is not None
                self._base[key] = claim.service
                if old != new:
                    i = bisect.bisect_left(self._sorted, (new, key))
                    self._sorted.insert(i, (new, key))
                    self._order[key] = new
                    start = min(start, i)
        if blocked_changed:
            self._blocked = +self._blocked  # drop the zero counts
        if blocked_changed or self._short:
            # Every key placed again: placing only those after the change would be wrong
            # when offsets were blocked or freed for keys before it.
            start = 0
        moved = self._place(start, staged)
        out: list[tuple[str, Service | None]] = []
        for key in {*staged, *moved}:
            claim = staged.get(key)
            if key in staged and claim is None:
                out.append((key, None))
            elif key in self._base:
                out.append((key, self._serve(key, network)))
            elif claim is not None:
                out.append((key, claim.service))
        return out

    def _serve(self, key: str, network: str) -> Service:
        base = self._base[key]
        off = self._offset.get(key)
        if off is None:
            return base
        return replace(base, vips=tuple(Vip(network, a) for a in addresses(off)))

    def _place(self, start: int, staged: dict[str, Claim | None]) -> set[str]:
        """Place the keys from index `start` of the order again (those before keep their
        offsets); the keys not staged whose offset changed."""
        again = [key for _, key in self._sorted[start:]]
        before: dict[str, int | None] = {}
        for key in again:
            off = self._offset.pop(key, None)
            if off is not None:
                del self._holder[off]
            before[key] = off
        # A placed offset is never a blocked one (a change of the blocked ones places
        # every key again), so these two do not overlap.
        free = SIZE - len(self._holder) - len(self._blocked)
        short = 0
        for key in again:
            if free <= 0:
                short += 1
                continue
            off = preferred(key)
            while off in self._holder or off in self._blocked:
                off = off % SIZE + 1
            self._holder[off] = key
            self._offset[key] = off
            free -= 1
        if short and not self._short:
            log.warning("autoallocate_exhausted", unallocated=short,
                        detail="every offset of 240.240.0.0/16 and 2001:2::/48 is taken; "
                               f"{short} ServiceEntry hosts get no address")
        if again:
            self._short = bool(short)
        return {k for k, off in before.items() if self._offset.get(k) != off and k not in staged}


def claim_of(info: ServiceInfo | None) -> Claim | None:
    """The claim of a served service (None: not served)."""
    if info is None:
        return None
    s = info.service
    return Claim(s, (info.created, s.namespace, info.source[1], s.hostname)
                 if info.auto_allocate else None)
