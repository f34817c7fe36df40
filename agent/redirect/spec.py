"""What one pod's redirection must be. Renderers and backends read only this."""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass, replace

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


class Backend(enum.StrEnum):
    IPTABLES = "iptables"
    NFTABLES = "nftables"
    EBPF = "ebpf"


class Profile(enum.StrEnum):
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
