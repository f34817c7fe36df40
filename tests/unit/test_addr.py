"""core/addr.py: the one check of every HOST:PORT and unix socket path in configs and
flags."""

from __future__ import annotations

import ipaddress

import pytest

from core.addr import AddressError, host_port, ip_port, plain_ip, port, unix_path, unmap


@pytest.mark.parametrize(("value", "kw", "want"), [
    ("127.0.0.1:15000", {}, ("127.0.0.1", 15000)),
    ("[::1]:15000", {}, ("::1", 15000)),
    ("[fe80::1%eth0]:80", {}, ("fe80::1%eth0", 80)),
    ("0.0.0.0:0", {"port_zero": True}, ("0.0.0.0", 0)),
    ("cp.meshnode-system.svc:15012", {"hostname": True}, ("cp.meshnode-system.svc", 15012)),
    ("localhost.:1", {"hostname": True}, ("localhost.", 1)),
])
def test_good(value: str, kw: dict[str, bool], want: tuple[str, int]) -> None:
    assert host_port(value, **kw) == want


@pytest.mark.parametrize(("value", "kw", "error"), [
    ("", {}, "empty, expected HOST:PORT"),
    ("127.0.0.1", {}, "'127.0.0.1' is not HOST:PORT"),
    (":15000", {}, "':15000' is not HOST:PORT"),
    ("127.0.0.1:99999", {}, "port 99999 out of range 1-65535"),
    ("127.0.0.1:0", {}, "port 0 out of range 1-65535"),
    ("127.0.0.1:65536", {"port_zero": True}, "port 65536 out of range 0-65535"),
    ("127.0.0.1:-1", {}, "port '-1' is not a number"),
    ("127.0.0.1:\uff11\uff12", {}, "port '\uff11\uff12' is not a number"),  # fullwidth digits
    ("::1:80", {}, "'::1:80': an IPv6 address goes in brackets, [::1]:PORT"),
    ("[::1]80", {}, "'[::1]80' is not [IPv6]:PORT"),
    ("[127.0.0.1]:80", {}, "'127.0.0.1' is not an IPv6 address"),
    ("localhost:80", {}, "'localhost' is not an IP address"),
    ("1.2.3:80", {"hostname": True}, "'1.2.3' is neither an IP address nor a host name"),
    ("a_b:80", {"hostname": True}, "'a_b' is neither an IP address nor a host name"),
    ("-a:80", {"hostname": True}, "'-a' is neither an IP address nor a host name"),
])
def test_bad(value: str, kw: dict[str, bool], error: str) -> None:
    with pytest.raises(AddressError) as e:
        host_port(value, **kw)
    assert str(e.value) == error


def test_ports_and_dns_entries() -> None:
    assert port(53) == 53 and port("65535") == 65535
    with pytest.raises(AddressError) as e:
        port(70000)
    assert str(e.value) == "port 70000 out of range 1-65535"
    assert ip_port("198.18.0.53", 53) == ("198.18.0.53", 53)
    assert ip_port("2001:db8::53", 53) == ("2001:db8::53", 53)
    assert ip_port("[2001:db8::53]:5353", 53) == ("2001:db8::53", 5353)
    with pytest.raises(AddressError) as e:
        ip_port("dns.example:53", 53)
    assert str(e.value) == "'dns.example' is not an IP address"


@pytest.mark.parametrize(("value", "error"), [
    ("", "empty, expected the absolute path of a unix socket"),
    ("run/cni.sock", "'run/cni.sock' is not an absolute path"),
    ("/run/meshnode/", "'/run/meshnode/' names a directory, not a socket"),
    ("/run/a\0b", "'/run/a\\x00b' contains a NUL byte"),
    ("/" + "x" * 107, f"'/{'x' * 107}' is 108 bytes; a unix socket path holds at most 107"),
])
def test_bad_socket_paths(value: str, error: str) -> None:
    with pytest.raises(AddressError) as e:
        unix_path(value)
    assert str(e.value) == error
    assert unix_path("/" + "x" * 106) == "/" + "x" * 106


@pytest.mark.parametrize(("text", "want"), [
    ("::ffff:1.2.3.4", "1.2.3.4"),
    ("::ffff:127.0.0.1", "127.0.0.1"),
    ("1.2.3.4", "1.2.3.4"),
    ("::1", "::1"),
    ("2001:db8::1", "2001:db8::1"),
    ("::1.2.3.4", "::102:304"),          # IPv4-compatible, not mapped: left alone
    ("fe80::1%eth0", "fe80::1%eth0"),
])
def test_unmap(text: str, want: str) -> None:
    assert plain_ip(text) == want
    assert unmap(ipaddress.ip_address(text)) == ipaddress.ip_address(want)


def test_plain_ip_refuses_a_name() -> None:
    with pytest.raises(ValueError):
        plain_ip("localhost")
