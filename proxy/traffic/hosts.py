"""Host name patterns as Istio writes them: "*" (any), "*.example.com" (any name below
example.com, not example.com itself), or an exact name. Used for SNI matches, Sidecar egress
hosts and wildcard ServiceEntry hosts. Case and a trailing dot do not matter (DNS)."""

from __future__ import annotations


def normalize(host: str) -> str:
    return host.lower().removesuffix(".")


def covers(pattern: str, name: str) -> bool:
    """Whether every name `name` stands for falls within `pattern` (Istio's SubsetOf):
    "*.example.com" covers "a.example.com", "a.b.example.com" and "*.b.example.com"."""
    p, n = normalize(pattern), normalize(name)
    if p == "*":
        return True
    if p.startswith("*."):
        suffix = p[1:]  # ".example.com"
        return (n[1:] if n.startswith("*.") else n).endswith(suffix)
    return p == n


def overlaps(a: str, b: str) -> bool:
    """Whether two patterns share a name (Istio's Matches): one covers the other."""
    return covers(a, b) or covers(b, a)
