"""VirtualService `tcp` and `tls` routes -> L4Routes of the services its hosts stand for.

Validation as Istio's ValidateVirtualService (pkg/config/validation/validation.go), worded
as there: "total destination weight = 0" when a route splits between destinations that all
weigh 0; a negative weight is refused ("weight N < 0"); a TLS route needs a match with
SNI hosts, each a subset of the service's hosts. Weights that do not sum to 100 are accepted
and read as relative, as Istio does. What Istio checks elsewhere is checked here too, because
the node proxy must be able to act on every route: a destination's subset must be defined
by the DestinationRule of that destination's service (Istio's analyzer, IST0101).

Not converted: `http` routes (HTTP is not proxied at L4: a warning), routes of a
VirtualService bound to gateways only (`gateways` without `mesh`), `exportTo` (every rule is
visible to every namespace), `delegate`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controlplane.ambient import read
from controlplane.traffic import fields
from controlplane.traffic.hosts import Registry, covers, fqdn
from core.mesh.traffic import L4Match, L4Route, RouteDestination, RouteKind, Subset, labels

# service key -> its subsets (from its DestinationRule), None: no rule for it
SubsetsOf = Callable[[str], tuple[Subset, ...] | None]


@dataclass(frozen=True, slots=True)
class Routes:
    hosts: tuple[str, ...]           # resolved against the VirtualService's namespace
    routes: tuple[L4Route, ...]


def _destinations(route: Any, f: str, ns: str, domain: str, registry: Registry,
                  subsets_of: SubsetsOf, warnings: list[str]) -> tuple[RouteDestination, ...]:
    items = read.items(route, f)
    if not items:
        raise read.Bad(f, "TCP route is required" if ".tcp[" in f else "TLS route is required")
    out: list[RouteDestination] = []
    total = 0
    for i, d in enumerate(items):
        fd = f"{f}[{i}]"
        d = read.mapping(d, fd)
        dest = d.get("destination")
        if dest is None:
            raise read.Bad(f"{fd}.destination", "destination is required")
        dest = read.mapping(dest, f"{fd}.destination")
        host = fields.wildcard_domain(dest.get("host"), f"{fd}.destination.host")
        if host == "*" or "*" in host:
            raise read.Bad(f"{fd}.destination.host", f"invalid destination host {host}")
        resolved = fqdn(host, ns, domain)
        key = registry.destination(resolved, ns)
        if key is None:
            # Accepted, as Istio accepts it (its analyzer warns): connections get no endpoint.
            warnings.append(f"{fd}.destination.host: no service has host {resolved!r}: "
                            "connections routed there are refused")
            key = f"{resolved.split('.')[1] if resolved.endswith('.svc.' + domain) else ns}/" \
                  f"{resolved}"
        subset = ""
        if dest.get("subset") is not None:
            subset = fields.subset_name(dest.get("subset"), f"{fd}.destination.subset")
            known = subsets_of(key)
            if known is None or all(s.name != subset for s in known):
                raise read.Bad(f"{fd}.destination.subset",
                               f'Referenced host+subset in destinationrule not found: '
                               f'"{resolved}+{subset}"')
        port = 0
        if dest.get("port") is not None:
            pm = read.mapping(dest.get("port"), f"{fd}.destination.port")
            port = read.port(pm.get("number"), f"{fd}.destination.port.number")
        weight = read.integer(d.get("weight"), f"{fd}.weight", -2**31, 2**31 - 1, 0)
        if weight < 0:
            raise read.Bad(f"{fd}.weight", f"weight {weight} < 0")
        total += weight
        out.append(RouteDestination(key, subset, port, weight))
    if len(out) > 1 and total == 0:
        raise read.Bad(f, "total destination weight = 0")
    return tuple(out)


def _match(m: Any, f: str, sni: bool, vs_hosts: list[str]) -> L4Match:
    m = read.mapping(m, f)
    subnets = tuple(read.cidr(s, f"{f}.destinationSubnets[{i}]") for i, s in
                    enumerate(read.items(m.get("destinationSubnets"),
                                         f"{f}.destinationSubnets")))
    port = m.get("port")
    port = 0 if port in (None, 0) else read.port(port, f"{f}.port")
    hosts: list[str] = []
    if sni:
        hosts = read.strings(m.get("sniHosts"), f"{f}.sniHosts")
        if not hosts:
            raise read.Bad(f"{f}.sniHosts", "TLS match must have at least one SNI host")
        for i, h in enumerate(hosts):
            fields.wildcard_domain(h, f"{f}.sniHosts[{i}]")
            if not any(covers(vh, h) for vh in vs_hosts):
                raise read.Bad(f"{f}.sniHosts[{i}]",
                               f"SNI host {h!r} is not a compatible subset of any of the "
                               f"virtual service hosts: [{', '.join(vs_hosts)}]")
    gateways = read.strings(m.get("gateways"), f"{f}.gateways")
    if gateways and "mesh" not in gateways:
        raise _NotMesh()
    return L4Match(port, subnets, labels(fields.label_map(m.get("sourceLabels"),
                                                          f"{f}.sourceLabels")),
                   read.string(m.get("sourceNamespace"), f"{f}.sourceNamespace"),
                   tuple(hosts))


class _NotMesh(Exception):
    """A match for gateways only: not a match of mesh traffic."""


def virtual_service(obj: dict[str, Any], domain: str, registry: Registry,
                    subsets_of: SubsetsOf, warnings: list[str]) -> Routes | None:
    """Its tls then tcp routes (the proxy tries TLS routes first when there is an SNI), or
    None when it does not apply to mesh traffic."""
    ns, name = read.namespace(obj), read.name(obj)
    spec = read.spec(obj)
    raw_hosts = read.strings(spec.get("hosts"), "spec.hosts")
    if not raw_hosts:
        warnings.append("spec.hosts: a delegate VirtualService is not applied at L4")
        return None
    for i, h in enumerate(raw_hosts):
        fields.wildcard_domain(h, f"spec.hosts[{i}]")
    gateways = read.strings(spec.get("gateways"), "spec.gateways")
    if gateways and "mesh" not in gateways:
        return None  # gateway traffic only
    if spec.get("exportTo") is not None:
        read.strings(spec.get("exportTo"), "spec.exportTo")
        warnings.append("spec.exportTo: not applied (the rule is visible to every namespace)")
    if read.items(spec.get("http"), "spec.http"):
        warnings.append("spec.http: HTTP routes are not applied by the L4 node proxy "
                        "(ignored)")
    routes: list[L4Route] = []
    for kind, key in ((RouteKind.TLS, "tls"), (RouteKind.TCP, "tcp")):
        for i, r in enumerate(read.items(spec.get(key), f"spec.{key}")):
            f = f"spec.{key}[{i}]"
            r = read.mapping(r, f)
            raw_matches = read.items(r.get("match"), f"{f}.match")
            if kind == RouteKind.TLS and not raw_matches:
                raise read.Bad(f"{f}.match", "TLS route must have at least one match condition")
            matches = []
            for j, m in enumerate(raw_matches):
                try:
                    matches.append(_match(m, f"{f}.match[{j}]", kind == RouteKind.TLS,
                                          raw_hosts))
                except _NotMesh:
                    continue
            dests = _destinations(r.get("route"), f"{f}.route", ns, domain, registry,
                                  subsets_of, warnings)
            if raw_matches and not matches:
                continue  # every match is for gateways: no route for mesh traffic
            routes.append(L4Route(kind, dests, tuple(matches), f"{ns}/{name}/{key}/{i}"))
    return Routes(tuple(fqdn(h, ns, domain) for h in raw_hosts), tuple(routes))
