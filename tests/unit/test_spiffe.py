"""core/spiffe.py: the one SPIFFE ID rule set of the agent, the proxy and the CA.

Each row: the URI, what `parse` makes of it (None: refused) and whether `parse_issuable` (the
agent's CSR, the CA) accepts it. The rows merge the cases of the former agent, proxy and CA
parsers (tests/identity/test_csr.py, tests/hbone/test_spiffe.py, tests/controlplane).
"""

from __future__ import annotations

import pytest

from core.spiffe import MAX_LEN, SpiffeError, SpiffeId, parse, parse_issuable

OK = ("cluster.local", "default", "sleep")

CASES: list[tuple[str, tuple[str, str, str] | None, bool]] = [
    ("spiffe://cluster.local/ns/default/sa/sleep", OK, True),
    ("spiffe://td.with.dots/ns/ns.with.dots/sa/sa.with.dots",
     ("td.with.dots", "ns.with.dots", "sa.with.dots"), True),
    ("spiffe://my-td_1/ns/Team-A/sa/svc_1", ("my-td_1", "Team-A", "svc_1"), True),
    # Empty segments: read (ztunnel accepts them), never issued.
    ("spiffe://td/ns//sa/b", ("td", "", "b"), False),
    ("spiffe://td/ns/a/sa/", ("td", "a", ""), False),
    ("spiffe://td/ns//sa/", ("td", "", ""), False),
    ("http://cluster.local/ns/a/sa/b", None, False),
    ("https://example.com/x", None, False),
    ("spiffe://Cluster.local/ns/a/sa/b", None, False),   # trust domain is lowercase
    ("spiffe://td:80/ns/a/sa/b", None, False),           # no port
    ("spiffe://user@td/ns/a/sa/b", None, False),
    ("spiffe:///ns/a/sa/b", None, False),
    ("spiffe://" + "t" * 256 + "/ns/a/sa/b", None, False),
    ("spiffe://td", None, False),
    ("spiffe://td/ns/a/sa", None, False),
    ("spiffe://td/ns/a/sa/b/", None, False),             # trailing slash
    ("spiffe://td/ns/a/sa/b/extra", None, False),
    ("spiffe://td/sa/a/ns/b", None, False),
    ("spiffe://td/ns/../sa/b", None, False),
    ("spiffe://td/ns/./sa/b", None, False),
    ("spiffe://td/ns/a%2F/sa/b", None, False),           # no %-encoding
    ("spiffe://td/ns/a/sa/b\n", None, False),
    ("spiffe://td/ns/é/sa/b", None, False),
    ("spiffe://td/ns/" + "a" * 2100 + "/sa/b", None, False),
]


@pytest.mark.parametrize("uri, want, issuable", CASES)
def test_parse(uri: str, want: tuple[str, str, str] | None, issuable: bool) -> None:
    if want is None:
        with pytest.raises(SpiffeError):
            parse(uri)
    else:
        sid = parse(uri)
        assert (sid.trust_domain, sid.namespace, sid.service_account) == want
        assert str(sid) == uri
        assert sid.principal == uri.removeprefix("spiffe://")
        assert sid.issuable is issuable
    if issuable:
        assert parse_issuable(uri) == parse(uri)
    else:
        with pytest.raises(SpiffeError):
            parse_issuable(uri)


def test_length_is_counted_in_bytes() -> None:
    head, tail = "spiffe://td/ns/", "/sa/b"
    fits = head + "a" * (MAX_LEN - len(head) - len(tail)) + tail
    assert parse(fits).namespace.startswith("a")
    with pytest.raises(SpiffeError, match="bytes"):
        parse(fits + "x")


@pytest.mark.parametrize("parts, ok", [
    (("td.with.dots", "ns.with.dots", "sa.with.dots"), True),
    (OK, True),
    (("td", "", ""), True),
    (("TD", "a", "b"), False),
    (("td", "a/b", "c"), False),
    (("td", "..", "c"), False),
])
def test_of_checks_and_round_trips(parts: tuple[str, str, str], ok: bool) -> None:
    if not ok:
        with pytest.raises(SpiffeError):
            SpiffeId.of(*parts)
        return
    sid = SpiffeId.of(*parts)
    assert sid == SpiffeId(*parts)
    assert parse(str(sid)) == sid
