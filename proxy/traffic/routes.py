"""Which route a connection takes, and which of its weighted destinations.

A VirtualService's routes are tried in order and the first that matches wins (Istio). TLS
routes match on the SNI of the ClientHello, so they are tried only when the proxy peeked one,
and before the TCP routes: Envoy, which Istio programs for a TLS port, prefers the filter
chain whose server names match over the one without, so TCP routes are the fallback for an
SNI no TLS route wants. No route matching means the service itself, as if there were no
VirtualService (the caller's default destination).

Weights are relative (current Istio validates only weight >= 0, and a total above 0 when there
are several destinations): a destination gets weight/total of the connections, a lone one all
of them, a 0 weight none. The split is per connection, drawn from the injected random source,
so a test can replay it."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from core.mesh.model import Workload
from core.mesh.traffic import L4Match, L4Route, RouteDestination, RouteKind
from proxy.traffic.hosts import covers
from proxy.traffic.subsets import selects


@dataclass(frozen=True, slots=True)
class Connection:
    """What the proxy knows about a new outbound connection when it routes it."""

    dst_ip: str
    dst_port: int
    src_ip: str = ""
    source: Workload | None = None      # the client pod's workload (locality, namespace)
    source_labels: Mapping[str, str] = field(default_factory=dict)
    sni: str = ""                       # from the ClientHello, when the proxy peeked one

    @property
    def source_namespace(self) -> str:
        return self.source.namespace if self.source is not None else ""


def match(m: L4Match, conn: Connection) -> bool:
    if m.port and m.port != conn.dst_port:
        return False
    if m.source_namespace and m.source_namespace != conn.source_namespace:
        return False
    if m.source_labels and not selects(m.source_labels, conn.source_labels):
        return False
    if m.sni_hosts and not (conn.sni and any(covers(h, conn.sni) for h in m.sni_hosts)):
        return False
    if m.destination_subnets:
        ip = ipaddress.ip_address(conn.dst_ip)
        if not any(ip in net for net in m.destination_subnets):
            return False
    return True


def matches(route: L4Route, conn: Connection) -> bool:
    """Matches are ORed; a route without any matches every connection."""
    return not route.matches or any(match(m, conn) for m in route.matches)


def select_route(routes: Sequence[L4Route], conn: Connection) -> L4Route | None:
    if conn.sni:
        tls = next((r for r in routes if r.kind == RouteKind.TLS and matches(r, conn)), None)
        if tls is not None:
            return tls
    return next((r for r in routes if r.kind == RouteKind.TCP and matches(r, conn)), None)


def pick_destination(route: L4Route, rng: random.Random) -> RouteDestination:
    dests = route.destinations
    if len(dests) == 1:
        return dests[0]
    n = rng.randrange(route.total_weight)
    for d in dests:
        if n < d.weight:
            return d
        n -= d.weight
    raise AssertionError("unreachable: n < total weight")
