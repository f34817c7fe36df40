"""Host name patterns, as Istio's SNI hosts, Sidecar hosts and ServiceEntry hosts mean them."""

from __future__ import annotations

import pytest

from proxy.traffic.hosts import covers, overlaps


@pytest.mark.parametrize(("pattern", "name", "expected"), [
    ("*", "anything.example.com", True),
    ("*", "*.example.com", True),
    ("a.example.com", "a.example.com", True),
    ("a.example.com", "A.Example.COM.", True),      # DNS: case and the root dot
    ("a.example.com", "b.example.com", False),
    ("*.example.com", "a.example.com", True),
    ("*.example.com", "a.b.example.com", True),
    ("*.example.com", "example.com", False),       # the wildcard needs a label
    ("*.example.com", "badexample.com", False),    # label boundary
    ("*.com", "example.com", True),                # Istio's own example
    ("*.com", "foo.example.com", True),
    ("*.example.com", "*.b.example.com", True),    # a narrower wildcard
    ("*.b.example.com", "*.example.com", False),   # a wider one
    ("a.example.com", "*.example.com", False),
])
def test_covers(pattern: str, name: str, expected: bool) -> None:
    assert covers(pattern, name) is expected


def test_overlaps_is_symmetric() -> None:
    assert overlaps("a.example.com", "*.example.com")
    assert overlaps("*.example.com", "a.example.com")
    assert not overlaps("a.example.com", "*.example.org")
