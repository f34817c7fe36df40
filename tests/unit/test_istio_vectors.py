"""Conformance: the `istio` profile renders exactly istio-cni's golden payloads.

Compared per table, as the kernel sees them: the same set of chains and, per chain, the same
rules in the same order (whitespace runs folded). Chain declaration order and the
interleaving of different chains' rules are not compared: they do not change behaviour.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest

from agent.redirect import iptables_rules, nftables_rules
from agent.redirect.spec import PROBE_SOURCE_V6, Profile, RedirectSpec

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "istio"
TEST_V6_PROBE = "e9ac:1e77:90ca:399f:4d6d:ece2:2f9b:3164"
VIFS = ("fake1s0f0", "fake1s0f1")

# Options per case, from the vectors' README (istio-cni's test table).
CASES: dict[str, dict[str, object]] = {
    "default": {"dns_capture": True},
    "ingress": {"dns_capture": False, "inbound_capture": False},
    "virtual_interfaces": {"dns_capture": False, "virtual_interfaces": VIFS},
    "ingress_and_virtual_interfaces": {
        "dns_capture": False, "inbound_capture": False, "virtual_interfaces": VIFS},
    "dns_pod_enabled_and_off_globally": {"dns_capture": True},
    "dns_pod_disabled_and_on_globally": {"dns_capture": False},
}

Canon = dict[str, dict[str, object]]  # table -> {"chains": set, "rules": {chain: [rule]}}


def fold(s: str) -> str:
    return " ".join(s.split())


def canon_iptables(text: str) -> list[Canon]:
    """Split a restore payload into families (a repeated table starts the next one)."""
    families: list[Canon] = []
    current: Canon = {}
    table = ""
    for raw in text.splitlines():
        line = fold(raw)
        if not line or line in ("iptables-save", "ip6tables-save") or line.startswith("#"):
            continue
        if line.startswith("*"):
            table = line[1:].strip()
            if table in current:
                families.append(current)
                current = {}
            current[table] = {"chains": set(), "rules": defaultdict(list)}
        elif line == "COMMIT":
            continue
        elif line.startswith("-N ") or line.startswith(":"):
            name = line[3:] if line.startswith("-N ") else line[1:].split()[0]
            current[table]["chains"].add(name)  # type: ignore[attr-defined]
        elif m := re.match(r"^-A (\S+) (.*)$", line):
            current[table]["rules"][m[1]].append(m[2])  # type: ignore[index]
        elif m := re.match(r"^-I (\S+) (\d+) (.*)$", line):
            current[table]["rules"][m[1]].append(f"@{m[2]} {m[3]}")  # type: ignore[index]
        else:
            raise AssertionError(f"unparsed line {line!r}")
    families.append(current)
    return families


def canon_nft(text: str) -> Canon:
    out: Canon = {}
    for raw in text.splitlines():
        line = fold(raw)
        if m := re.match(r"^add table inet (\S+)$", line):
            out.setdefault(m[1], {"chains": set(), "rules": defaultdict(list)})
        elif m := re.match(r"^add chain inet (\S+) (\S+)", line):
            out[m[1]]["chains"].add(m[2])  # type: ignore[attr-defined]
        elif m := re.match(r"^add rule inet (\S+) (\S+) (.*)$", line):
            out[m[1]]["rules"][m[2]].append(m[3])  # type: ignore[index]
        elif re.match(r"^(flush|delete) table |^flush chain |^add set ", line) or not line:
            continue
        else:
            raise AssertionError(f"unparsed line {line!r}")
    return out


def pod_spec(case: str, ipv6: bool) -> RedirectSpec:
    opts = dict(CASES[case])
    if ipv6:
        opts.update(ipv6=True, probe_source_v6=TEST_V6_PROBE)
    return RedirectSpec(profile=Profile.ISTIO, **opts)  # type: ignore[arg-type]


ALL = [(c, v6) for c in [*CASES, "hostprobe"] for v6 in (False, True)]
IDS = [f"{c}{'_ipv6' if v6 else ''}" for c, v6 in ALL]


def test_every_vector_is_covered() -> None:
    for kind in ("iptables", "nftables"):
        on_disk = {p.stem for p in (VECTORS / kind).glob("*.golden")}
        assert on_disk == set(IDS), kind


@pytest.mark.parametrize(("case", "ipv6"), ALL, ids=IDS)
def test_iptables_matches_golden(case: str, ipv6: bool) -> None:
    golden = (VECTORS / "iptables" / f"{case}{'_ipv6' if ipv6 else ''}.golden").read_text()
    if case == "hostprobe":
        # istio-cni's host test keeps the default v6 SNAT source.
        spec = RedirectSpec(profile=Profile.ISTIO, ipv6=ipv6, probe_source_v6=PROBE_SOURCE_V6)
        ours = "".join(iptables_rules.render_host_probe(spec, f).text() for f in spec.families)
    else:
        spec = pod_spec(case, ipv6)
        ours = "".join(iptables_rules.render_pod(spec, f).text() for f in spec.families)
    assert canon_iptables(ours) == canon_iptables(golden)


@pytest.mark.parametrize(("case", "ipv6"), ALL, ids=IDS)
def test_nftables_matches_golden(case: str, ipv6: bool) -> None:
    golden = (VECTORS / "nftables" / f"{case}{'_ipv6' if ipv6 else ''}.golden").read_text()
    if case == "hostprobe":
        spec = RedirectSpec(profile=Profile.ISTIO, ipv6=ipv6, kubelet_uid=1000,
                            probe_source_v6=TEST_V6_PROBE)
        ours = nftables_rules.render_host_probe(spec).text()
    else:
        ours = nftables_rules.render_pod(pod_spec(case, ipv6)).text()
    assert canon_nft(ours) == canon_nft(golden)


def test_comparison_detects_a_changed_rule() -> None:
    """The comparator is not vacuous: one changed port must make it differ."""
    golden = (VECTORS / "iptables" / "default.golden").read_text()
    assert canon_iptables(golden.replace("15006", "15007")) != canon_iptables(golden)
    nft = (VECTORS / "nftables" / "default.golden").read_text()
    assert canon_nft(nft.replace("redirect to :15001", "redirect to :15002")) != canon_nft(nft)
