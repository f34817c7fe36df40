"""Host names in traffic rules -> service keys ("namespace/hostname").

Istio resolves a short name against the rule's namespace (ResolveShortnameToFQDN: a name
without a dot gets ".<namespace>.svc.<domain>"); "*" and names with a dot are kept. A host
then stands for every service of that hostname the control plane serves, in whatever
namespace: the node proxy routes by the service a connection resolved to, so the rules go to
each of them. A wildcard host ("*.example.com") stands for every served hostname it covers.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable


def normalize(host: str) -> str:
    return host.lower().removesuffix(".")


def covers(pattern: str, name: str) -> bool:
    """Istio's SubsetOf: every name `name` stands for falls within `pattern`."""
    p, n = normalize(pattern), normalize(name)
    if p == "*":
        return True
    if p.startswith("*."):
        return (n[1:] if n.startswith("*.") else n).endswith(p[1:])
    return p == n


def fqdn(host: str, namespace: str, domain_suffix: str) -> str:
    """ResolveShortnameToFQDN."""
    if host == "*" or "." in host:
        return host
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        return f"{host}.{namespace}.svc.{domain_suffix}"


class Registry:
    """The served hostnames and the namespaces serving each (kept from the ambient index's
    service keys)."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._by_host: dict[str, set[str]] = defaultdict(set)
        for k in keys:
            self.add(k)

    def add(self, key: str) -> bool:
        ns, _, host = key.partition("/")
        nss = self._by_host[host]
        if ns in nss:
            return False
        nss.add(ns)
        return True

    def remove(self, key: str) -> bool:
        ns, _, host = key.partition("/")
        nss = self._by_host.get(host)
        if nss is None or ns not in nss:
            return False
        nss.discard(ns)
        if not nss:
            del self._by_host[host]
        return True

    def keys(self, host: str) -> list[str]:
        """The service keys a (resolved) rule host stands for, sorted."""
        if "*" in host:
            return sorted(f"{ns}/{h}" for h, nss in self._by_host.items() if covers(host, h)
                          for ns in nss)
        return sorted(f"{ns}/{host}" for ns in self._by_host.get(host, ()))

    def destination(self, host: str, namespace: str) -> str | None:
        """The service key a route destination's (resolved) host means: the service of that
        hostname in the rule's namespace, else the only or first one; None if none serves it."""
        nss = self._by_host.get(host)
        if not nss:
            return None
        return f"{namespace if namespace in nss else min(nss)}/{host}"
