"""Validate the addresses and socket paths of every config key and flag, before any socket is
made: a bad value must be a one-line error naming the key, not a crash or a bind elsewhere.

Shared by the agent, proxy and control-plane configs. The messages leave out the key; the
caller prefixes it (`config: admin_address: port 99999 out of range 1-65535`).

Also `unmap`/`plain_ip`: an IPv4 peer of a dual-stack socket shows up IPv4-mapped
(``::ffff:1.2.3.4``); policies, conntrack, pod IP lists and upstream sockets want it plain.
"""

from __future__ import annotations

import ipaddress
import re

# sun_path is 108 bytes on Linux, the terminating NUL included.
MAX_UNIX_PATH = 107
_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressError(ValueError):
    """The value is not usable; the message says why, without the key."""


def host_port(value: str, *, hostname: bool = False, port_zero: bool = False) -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT` -> (host, port), the host without brackets.

    `hostname`: the host may be a DNS name (addresses we dial); else a literal IP (addresses
    we listen on: a name would be resolved at bind time, too late to say which key was wrong).
    `port_zero`: port 0 (any free port) is accepted, for listeners whose bound port is logged.
    """
    if not value:
        raise AddressError("empty, expected HOST:PORT")
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]")
        if not sep:
            raise AddressError(f"{value!r}: no ']' after the IPv6 address")
        if not port_text.startswith(":"):
            raise AddressError(f"{value!r} is not [IPv6]:PORT")
        port_text = port_text[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise AddressError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host:
            raise AddressError(f"{value!r} is not HOST:PORT")
        if ":" in host:
            raise AddressError(f"{value!r}: an IPv6 address goes in brackets, [{host}]:PORT")
        _check_host(host, hostname)
    return host, port(port_text, zero=port_zero)


def port(value: str | int, *, zero: bool = False) -> int:
    """A TCP/UDP port: 1-65535 (0-65535 with `zero`)."""
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()):
            raise AddressError(f"port {value!r} is not a number")
        value = int(value)
    low = 0 if zero else 1
    if not low <= value <= 65535:
        raise AddressError(f"port {value} out of range {low}-65535")
    return value


def ip_port(value: str, default_port: int) -> tuple[str, int]:
    """`IP`, `IP:PORT` or `[IPv6]:PORT` (a bare IPv6 address without a port too)."""
    try:
        return str(ipaddress.ip_address(value)), default_port
    except ValueError:
        pass
    return host_port(value)


def unix_path(value: str) -> str:
    """An absolute path a unix socket can be bound at."""
    if not value:
        raise AddressError("empty, expected the absolute path of a unix socket")
    if "\0" in value:
        raise AddressError(f"{value!r} contains a NUL byte")
    if not value.startswith("/"):
        raise AddressError(f"{value!r} is not an absolute path")
    if value.endswith("/"):
        raise AddressError(f"{value!r} names a directory, not a socket")
    size = len(value.encode())
    if size > MAX_UNIX_PATH:
        raise AddressError(f"{value!r} is {size} bytes; a unix socket path holds at most "
                           f"{MAX_UNIX_PATH}")
    return value


def unmap(ip: IPAddress) -> IPAddress:
    """``::ffff:1.2.3.4`` -> ``1.2.3.4``; any other address unchanged."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def plain_ip(text: str) -> str:
    """`unmap` on text: ``"::ffff:1.2.3.4"`` -> ``"1.2.3.4"``. ValueError if not an IP."""
    return str(unmap(ipaddress.ip_address(text)))


def _check_host(host: str, hostname: bool) -> None:
    try:
        ipaddress.IPv4Address(host)
        return
    except ValueError:
        pass
    if not hostname:
        raise AddressError(f"{host!r} is not an IP address")
    labels = host.removesuffix(".").split(".")
    # An all-numeric last label is a mistyped IPv4 address (1.2.3), not a name.
    if (len(host) > 253 or not all(_LABEL.match(label) for label in labels)
            or labels[-1].isdigit()):
        raise AddressError(f"{host!r} is neither an IP address nor a host name")
