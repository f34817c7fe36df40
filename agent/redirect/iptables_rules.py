"""Render a RedirectSpec as iptables-restore payloads, one per IP family.

Pure: no I/O. The rule order follows istio-cni's ambient in-pod rules (its golden files are
our conformance vectors); meshnode's extra options (exclusions) add RETURN rules right
before the redirect they carve out of.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.redirect.profile import names_for
from agent.redirect.spec import RESTORE_MASK, RedirectSpec

BUILTIN_CHAINS = frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"})


@dataclass(frozen=True)
class Rule:
    chain: str
    args: str
    # `-I chain 1` instead of `-A chain`: the host probe SNAT must win over other SNATs.
    insert_first: bool = False

    def line(self) -> str:
        op = f"-I {self.chain} 1" if self.insert_first else f"-A {self.chain}"
        return f"{op} {self.args}"

    @property
    def is_jump_from_builtin(self) -> bool:
        return self.chain in BUILTIN_CHAINS


@dataclass(frozen=True)
class Table:
    name: str
    chains: tuple[str, ...]  # the user chains we own in this table
    rules: tuple[Rule, ...]  # in apply order, jumps from built-in chains included

    def text(self) -> str:
        lines = [f"*{self.name}"]
        # `:CHAIN - [0:0]` rather than `-N`: under --noflush it creates the chain or
        # flushes ours if it exists, which is what makes apply idempotent.
        lines += [f":{c} - [0:0]" for c in self.chains]
        lines += [r.line() for r in self.rules]
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Payload:
    family: int
    tables: tuple[Table, ...]

    def text(self) -> str:
        return "".join(t.text() for t in self.tables)

    def table(self, name: str) -> Table | None:
        return next((t for t in self.tables if t.name == name), None)


def _mark(value: int, mask: int) -> str:
    return f"{value:#x}/{mask:#x}"


def render_pod(spec: RedirectSpec, family: int) -> Payload:
    """The in-pod payload for one family (4 or 6)."""
    n = names_for(spec.profile)
    pre, out = n.prerouting, n.output
    lo = "127.0.0.1/32" if family == 4 else "::1/128"
    probe = spec.probe_source_v4 if family == 4 else spec.probe_source_v6
    mark = _mark(spec.proxy_mark, spec.mark_mask)
    conn = _mark(spec.connmark, spec.mark_mask)

    mangle = Table("mangle", (pre, out), (
        Rule("PREROUTING", f"-j {pre}"),
        Rule("OUTPUT", f"-j {out}"),
        Rule(pre, f"-m mark --mark {mark} -j CONNMARK --set-xmark {conn}"),
        Rule(out, f"-m connmark --mark {conn} -j CONNMARK --restore-mark "
                  f"--nfmask {RESTORE_MASK:#x} --ctmask {RESTORE_MASK:#x}"),
    ))

    nat: list[Rule] = [Rule("OUTPUT", f"-j {out}"), Rule("PREROUTING", f"-j {pre}")]
    # Virtual interfaces (e.g. KubeVirt): what enters on them is the pod's own outbound.
    for ifname in spec.virtual_interfaces:
        nat.append(Rule(pre, f"-i {ifname} -p tcp -j REDIRECT --to-ports {spec.outbound_port}"))
        nat.append(Rule(pre, f"-i {ifname} -p tcp -j RETURN"))
    if spec.inbound_capture:
        nat.append(Rule(pre, f"-s {probe} -p tcp -m tcp -j ACCEPT"))
    nat.append(Rule(out, f"-d {probe} -p tcp -m tcp -j ACCEPT"))
    if spec.inbound_capture:
        for port in spec.exclude_inbound_ports:
            nat.append(Rule(pre, f"-p tcp -m tcp --dport {port} -j RETURN"))
        nat.append(Rule(pre, f"! -d {lo} -p tcp ! --dport {spec.tunnel_port} -m mark ! --mark "
                             f"{mark} -j REDIRECT --to-ports {spec.inbound_port}"))
    if spec.dns_capture:
        nat.append(Rule(out, f"! -o lo -p udp -m mark ! --mark {mark} -m udp --dport 53 "
                             f"-j REDIRECT --to-port {spec.dns_port}"))
        nat.append(Rule(out, f"! -d {lo} -p tcp --dport 53 -m mark ! --mark {mark} "
                             f"-j REDIRECT --to-ports {spec.dns_port}"))
    nat.append(Rule(out, f"-p tcp -m mark --mark {conn} -j ACCEPT"))
    nat.append(Rule(out, f"! -d {lo} -o lo -j ACCEPT"))
    for cidr in spec.cidrs(family):
        nat.append(Rule(out, f"-d {cidr} -j RETURN"))
    for port in spec.exclude_outbound_ports:
        nat.append(Rule(out, f"-p tcp -m tcp --dport {port} -j RETURN"))
    nat.append(Rule(out, f"! -d {lo} -p tcp -m mark ! --mark {mark} "
                         f"-j REDIRECT --to-ports {spec.outbound_port}"))
    tables = [mangle, Table("nat", (pre, out), tuple(nat))]

    if spec.dns_capture:
        # Separate conntrack zones for app->proxy and proxy->upstream DNS flows, otherwise
        # the two UDP flows can collide on the same tuple (istio #33469).
        tables.append(Table("raw", (out, pre), (
            Rule("PREROUTING", f"-j {pre}"),
            Rule("OUTPUT", f"-j {out}"),
            Rule(out, f"-p udp -m mark --mark {mark} -m udp --dport 53 -j CT --zone 1"),
            Rule(pre, f"-p udp -m mark ! --mark {mark} -m udp --sport 53 -j CT --zone 1"),
        )))
    return Payload(family, tuple(tables))


def render_host_probe(spec: RedirectSpec, family: int) -> Payload:
    """The host-netns rule that SNATs kubelet's probes so in-pod rules can let them in."""
    n = names_for(spec.profile)
    probe = spec.probe_source_v4 if family == 4 else spec.probe_source_v6
    chain = n.postrouting
    return Payload(family, (Table("nat", (chain,), (
        Rule("POSTROUTING", f"-j {chain}", insert_first=True),
        Rule(chain, f"-m owner --socket-exists -p tcp -m set --match-set "
                    f"{n.probe_set}-v{family} dst -j SNAT --to-source {probe}"),
    )),))


def render_probe_ipsets(spec: RedirectSpec) -> str:
    """`ipset restore` input creating the probe address sets the host rule matches."""
    n = names_for(spec.profile)
    lines = [f"create {n.probe_set}-v4 hash:ip family inet comment -exist"]
    if spec.ipv6:
        lines.append(f"create {n.probe_set}-v6 hash:ip family inet6 comment -exist")
    return "\n".join(lines) + "\n"
