"""Render a RedirectSpec as one nft script for the native nftables backend.

Pure: no I/O. Tables are family `inet`, so one rule set covers both IP families; family-
specific matches (`ip daddr`, `ip6 daddr`) appear once per enabled family. The rule order
follows istio-cni's nftables goldens.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.redirect.profile import names_for
from agent.redirect.spec import RedirectSpec


@dataclass(frozen=True)
class BaseChain:
    name: str
    type: str
    hook: str
    priority: int

    def decl(self) -> str:
        return f"{{ type {self.type} hook {self.hook} priority {self.priority} ; }}"


@dataclass(frozen=True)
class NftTable:
    name: str
    base_chains: tuple[BaseChain, ...]
    chains: tuple[str, ...]
    rules: tuple[tuple[str, str], ...]  # (chain, rule text) in apply order
    sets: tuple[tuple[str, str], ...] = ()  # (name, element type)

    @property
    def all_chains(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.base_chains) + self.chains

    def text(self) -> str:
        t = f"inet {self.name}"
        if self.sets:
            # A table holding sets (the host probe addresses) is kept: replacing it would
            # drop the pods' addresses. Flushing its chains is enough to stay idempotent.
            lines = [f"add table {t}"]
            lines += [f"add set {t} {name} {{ type {typ} ; }}" for name, typ in self.sets]
        else:
            # add+delete+add: one atomic transaction that replaces the table whether or
            # not it existed, so apply is idempotent and leaves no stale chain behind.
            lines = [f"add table {t}", f"delete table {t}", f"add table {t}"]
        lines += [f"add chain {t} {b.name} {b.decl()}" for b in self.base_chains]
        lines += [f"add chain {t} {c}" for c in self.chains]
        if self.sets:
            lines += [f"flush chain {t} {c}" for c in self.all_chains]
        lines += [f"add rule {t} {chain} {rule}" for chain, rule in self.rules]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class NftScript:
    tables: tuple[NftTable, ...]

    def text(self) -> str:
        return "".join(t.text() for t in self.tables)

    def table(self, name: str) -> NftTable | None:
        return next((t for t in self.tables if t.name == name), None)


def _per_family(spec: RedirectSpec, fmt: str) -> list[str]:
    """Expand a rule template once per enabled family: {ip}, {lo}, {probe}."""
    out = []
    for fam in spec.families:
        out.append(fmt.format(
            ip="ip" if fam == 4 else "ip6",
            lo="127.0.0.1/32" if fam == 4 else "::1/128",
            probe=spec.probe_source_v4 if fam == 4 else spec.probe_source_v6,
        ))
    return out


def render_pod(spec: RedirectSpec) -> NftScript:
    n = names_for(spec.profile)
    pre, out = n.nft_prerouting, n.nft_output
    mask, mark, conn = f"{spec.mark_mask:#x}", f"{spec.proxy_mark:#x}", f"{spec.connmark:#x}"
    not_proxy = f"mark and {mask} != {mark}"

    nat: list[tuple[str, str]] = [("output", f"jump {out}"), ("prerouting", f"jump {pre}")]
    for ifname in spec.virtual_interfaces:
        nat.append((pre, f"iifname {ifname} meta l4proto tcp counter redirect to "
                         f":{spec.outbound_port}"))
        nat.append((pre, f"iifname {ifname} meta l4proto tcp counter return"))
    if spec.inbound_capture:
        nat += [(pre, r) for r in _per_family(
            spec, "meta l4proto tcp {ip} saddr {probe} counter accept")]
    nat += [(out, r) for r in _per_family(
        spec, "meta l4proto tcp {ip} daddr {probe} counter accept")]
    if spec.inbound_capture:
        for port in spec.exclude_inbound_ports:
            nat.append((pre, f"tcp dport {port} counter return"))
        nat += [(pre, r) for r in _per_family(
            spec, "{ip} daddr != {lo} tcp dport != " + str(spec.tunnel_port)
            + f" {not_proxy} counter redirect to :{spec.inbound_port}")]
    if spec.dns_capture:
        nat.append((out, f"oifname != lo {not_proxy} udp dport 53 counter redirect to "
                         f":{spec.dns_port}"))
        nat += [(out, r) for r in _per_family(
            spec, "{ip} daddr != {lo} tcp dport 53 " + not_proxy
            + f" counter redirect to :{spec.dns_port}")]
    nat.append((out, f"meta l4proto tcp mark and {mask} == {conn} counter accept"))
    nat += [(out, r) for r in _per_family(spec, "oifname lo {ip} daddr != {lo} counter accept")]
    for fam in spec.families:
        ip = "ip" if fam == 4 else "ip6"
        for cidr in spec.cidrs(fam):
            nat.append((out, f"{ip} daddr {cidr} counter return"))
    for port in spec.exclude_outbound_ports:
        nat.append((out, f"tcp dport {port} counter return"))
    nat += [(out, r) for r in _per_family(
        spec, "meta l4proto tcp {ip} daddr != {lo} " + not_proxy
        + f" counter redirect to :{spec.outbound_port}")]

    keep = f"{0xFFFFFFFF & ~spec.mark_mask:#x}"
    tables = [
        NftTable(n.nft_table("nat"), (
            BaseChain("prerouting", "nat", "prerouting", -100),
            BaseChain("output", "nat", "output", -100),
        ), (pre, out), tuple(nat)),
        NftTable(n.nft_table("mangle"), (
            BaseChain("prerouting", "filter", "prerouting", -150),
            # type route: re-route after the mark is restored, so replies to proxy-marked
            # flows take table 100.
            BaseChain("output", "route", "output", -150),
        ), (pre, out), (
            ("prerouting", f"jump {pre}"),
            ("output", f"jump {out}"),
            (pre, f"meta mark & {mask} == {mark} counter ct mark set ct mark & {keep} | {conn}"),
            (out, f"ct mark and {mask} == {conn} counter meta mark set ct mark"),
        )),
    ]
    if spec.dns_capture:
        tables.append(NftTable(n.nft_table("raw"), (
            BaseChain("prerouting", "filter", "prerouting", -300),
            BaseChain("output", "filter", "output", -300),
        ), (pre, out), (
            ("prerouting", f"jump {pre}"),
            ("output", f"jump {out}"),
            (out, f"udp dport 53 meta mark and {mask} == {mark} counter ct zone set 1"),
            (pre, f"udp sport 53 meta mark and {mask} != {mark} counter ct zone set 1"),
        )))
    return NftScript(tuple(tables))


def render_host_probe(spec: RedirectSpec) -> NftScript:
    """The host-netns kubelet probe SNAT, with the address sets it matches."""
    n = names_for(spec.profile)
    sets = [(f"{n.probe_set}-v4", "ipv4_addr")]
    rules = [("postrouting", f"meta l4proto tcp skuid {spec.kubelet_uid} ip daddr "
                             f"@{n.probe_set}-v4 counter snat to {spec.probe_source_v4}")]
    if spec.ipv6:
        sets.append((f"{n.probe_set}-v6", "ipv6_addr"))
        rules.append(("postrouting", f"meta l4proto tcp skuid {spec.kubelet_uid} ip6 daddr "
                                     f"@{n.probe_set}-v6 counter snat to {spec.probe_source_v6}"))
    return NftScript((NftTable(
        n.nft_table("nat"),
        (BaseChain("postrouting", "nat", "postrouting", 100),),
        (), tuple(rules), tuple(sets)),))
