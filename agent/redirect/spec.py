"""What one pod's redirection must be. Renderers and backends read only this.

Also the one definition of the capture options an operator sets (`CaptureOptions`): the
agent config's `capture:` keys and a pod's plugin `capture` overrides are its fields, the
`meshnode redirect` flags are generated from it, and the Helm chart's `capture` values map
onto it (tests/unit/test_capture_options.py checks the chart).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from core.config import ChoiceEnum
from core.ports import (
    CONNMARK,
    DNS_PORT,
    INBOUND_PORT,
    MARK_MASK,
    OUTBOUND_PORT,
    PROXY_MARK,
    TUNNEL_PORT,
)

RESTORE_MASK = 0xFFFFFFFF
ROUTE_TABLE = 100
RULE_PRIORITY = 32764
PROBE_SOURCE_V4 = "169.254.7.127"
PROBE_SOURCE_V6 = "fd16:9254:7127:1337:ffff:ffff:ffff:ffff"

# Linux IFNAMSIZ is 16 including the NUL; names go into rule text, so be strict.
_IFNAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")


class Backend(ChoiceEnum):
    IPTABLES = "iptables"
    NFTABLES = "nftables"
    EBPF = "ebpf"


class IptablesFlavour(ChoiceEnum):
    """Which iptables: `auto` picks legacy only if the host's legacy tables hold rules."""

    AUTO = "auto"
    NFT = "nft"
    LEGACY = "legacy"

    @classmethod
    def _missing_(cls, value: object) -> IptablesFlavour:
        raise ValueError("must be auto, nft or legacy")


class Profile(ChoiceEnum):
    MESHNODE = "meshnode"
    ISTIO = "istio"


class SpecError(ValueError):
    """An invalid redirect option; the message names the option."""


def _port(name: str, value: int) -> int:
    if not 1 <= value <= 65535:
        raise SpecError(f"{name}: port {value} is outside 1-65535")
    return value


@dataclass(frozen=True)
class RedirectSpec:
    """The redirection for one pod. Immutable; build variants with `replace`."""

    outbound_port: int = OUTBOUND_PORT
    inbound_port: int = INBOUND_PORT
    tunnel_port: int = TUNNEL_PORT
    dns_port: int = DNS_PORT
    proxy_mark: int = PROXY_MARK
    mark_mask: int = MARK_MASK
    connmark: int = CONNMARK
    route_table: int = ROUTE_TABLE
    rule_priority: int = RULE_PRIORITY
    probe_source_v4: str = PROBE_SOURCE_V4
    probe_source_v6: str = PROBE_SOURCE_V6
    dns_capture: bool = True
    inbound_capture: bool = True
    ipv6: bool = False
    virtual_interfaces: tuple[str, ...] = ()
    exclude_outbound_cidrs: tuple[str, ...] = ()
    exclude_inbound_ports: tuple[int, ...] = ()
    exclude_outbound_ports: tuple[int, ...] = ()
    profile: Profile = Profile.MESHNODE
    # Only for the host probe rule on nftables: nft has no `--socket-exists`, so kubelet is
    # matched by uid (istio-cni does the same).
    kubelet_uid: int = 0

    def __post_init__(self) -> None:
        for name in ("outbound_port", "inbound_port", "tunnel_port", "dns_port"):
            _port(name, getattr(self, name))
        for p in self.exclude_inbound_ports:
            _port("exclude_inbound_ports", p)
        for p in self.exclude_outbound_ports:
            _port("exclude_outbound_ports", p)
        for name in ("proxy_mark", "mark_mask", "connmark"):
            v = getattr(self, name)
            if not 0 < v <= 0xFFFFFFFF:
                raise SpecError(f"{name}: {v:#x} is not a 32-bit non-zero mark")
        if self.proxy_mark & ~self.mark_mask or self.connmark & ~self.mark_mask:
            raise SpecError("proxy_mark and connmark must fit inside mark_mask")
        if self.proxy_mark == self.connmark:
            raise SpecError("proxy_mark and connmark must differ")
        if not 1 <= self.route_table <= 0xFFFFFFFF or self.route_table in (253, 254, 255):
            raise SpecError(f"route_table: {self.route_table} is reserved or out of range")
        try:
            if ipaddress.ip_address(self.probe_source_v4).version != 4:
                raise ValueError
        except ValueError:
            raise SpecError(f"probe_source_v4: {self.probe_source_v4!r} is not IPv4") from None
        try:
            if ipaddress.ip_address(self.probe_source_v6).version != 6:
                raise ValueError
        except ValueError:
            raise SpecError(f"probe_source_v6: {self.probe_source_v6!r} is not IPv6") from None
        for ifname in self.virtual_interfaces:
            if not _IFNAME.match(ifname):
                raise SpecError(f"virtual_interfaces: {ifname!r} is not an interface name")
        cidrs = []
        for c in self.exclude_outbound_cidrs:
            try:
                net = ipaddress.ip_network(c, strict=False)
            except ValueError:
                raise SpecError(f"exclude_outbound_cidrs: {c!r} is not a CIDR") from None
            cidrs.append(str(net))
        # Normalise so equal specs compare equal and render identically.
        object.__setattr__(self, "exclude_outbound_cidrs", tuple(cidrs))
        object.__setattr__(self, "profile", Profile(self.profile))
        if not isinstance(self.ipv6, bool):
            # "auto" is the agent's per-pod choice (agent/nodeagent/ipfamily.py), resolved
            # before a spec is built; a spec itself is always one or both families.
            raise SpecError(f"ipv6: {self.ipv6!r} is not true or false")
        if self.kubelet_uid < 0:
            raise SpecError("kubelet_uid must be >= 0")

    @property
    def families(self) -> tuple[int, ...]:
        return (4, 6) if self.ipv6 else (4,)

    def cidrs(self, family: int) -> list[str]:
        return [c for c in self.exclude_outbound_cidrs
                if ipaddress.ip_network(c).version == family]

    def with_(self, **changes: object) -> RedirectSpec:
        return replace(self, **changes)  # type: ignore[arg-type]


# -- the capture options -------------------------------------------------------------------

AUTO = "auto"  # `ipv6: auto`: per pod, from its addresses (agent/nodeagent/ipfamily.py)


def _flag(flag: str, help: str | None = None, metavar: str | None = None) -> dict[str, Any]:
    """A capture option's `meshnode redirect` flag (cli/redirect_cmd.py makes it): a bool
    option whose default is true gets an off switch (`--no-dns`), any other bool an on
    switch (`--ipv6`); a list takes comma-separated values (`--exclude-outbound-ports 80,443`)."""
    return {"flag": flag, "help": help, "metavar": metavar}


@dataclass
class CaptureOptions:
    """The capture options: the same key in the agent config's `capture:` section, in a
    pod's plugin `capture` overrides and in `RedirectSpec`; a flag of `meshnode redirect`;
    a camelCase value under the Helm chart's `capture`. Lists here, tuples in the spec."""

    # true: dual stack; false: IPv4 only (IPv6 passes untouched); "auto" (config and per
    # pod only): dual stack when the pod has an IPv6 address
    ipv6: bool | str = field(default=AUTO, metadata=_flag(
        "--ipv6", "dual stack: also IPv6 rules"))
    dns_capture: bool = field(default=True, metadata=_flag(
        "--no-dns", "do not capture DNS (port 53)"))
    inbound_capture: bool = field(default=True, metadata=_flag(
        "--ingress", "ingress mode: no inbound capture"))
    virtual_interfaces: list[str] = field(default_factory=list, metadata=_flag(
        "--virtual-interfaces", "inbound on these interfaces is treated as outbound",
        "IF,..."))
    exclude_outbound_cidrs: list[str] = field(default_factory=list, metadata=_flag(
        "--exclude-outbound-cidrs", metavar="CIDR,..."))
    exclude_inbound_ports: list[int] = field(default_factory=list, metadata=_flag(
        "--exclude-inbound-ports", metavar="PORT,..."))
    exclude_outbound_ports: list[int] = field(default_factory=list, metadata=_flag(
        "--exclude-outbound-ports", metavar="PORT,..."))

    def spec(self, base: RedirectSpec | None = None) -> RedirectSpec:
        """`base` (default: the defaults) with these options; `ipv6: auto` counts as false
        here (the agent resolves it per pod before building a pod's spec)."""
        values = {f.name: getattr(self, f.name) for f in fields(CaptureOptions)}
        values["ipv6"] = self.ipv6 is True
        return with_overrides(base or RedirectSpec(), values)


CAPTURE_OPTIONS: tuple[str, ...] = tuple(f.name for f in fields(CaptureOptions))


def with_overrides(spec: RedirectSpec, overrides: Mapping[str, Any]) -> RedirectSpec:
    """`spec` with some capture options changed (a pod's plugin `capture` object, or a
    whole `CaptureOptions`). Raises SpecError for a key that is not a capture option and
    for a bad value (the spec validates itself); a value of the wrong type may raise
    TypeError."""
    unknown = set(overrides) - set(CAPTURE_OPTIONS)
    if unknown:
        raise SpecError(f"capture: unknown option(s) {sorted(unknown)}")
    changes: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                               for k, v in overrides.items()}
    return replace(spec, **changes)
