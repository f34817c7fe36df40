from __future__ import annotations

import pytest

from agent.redirect import iptables_rules, nftables_rules
from agent.redirect.spec import RedirectSpec, SpecError


def test_defaults_are_ambients() -> None:
    s = RedirectSpec()
    assert (s.outbound_port, s.inbound_port, s.tunnel_port, s.dns_port) == (
        15001, 15006, 15008, 15053)
    assert (s.proxy_mark, s.mark_mask, s.connmark, s.route_table) == (0x539, 0xFFF, 0x111, 100)
    assert s.probe_source_v4 == "169.254.7.127"
    assert s.probe_source_v6 == "fd16:9254:7127:1337:ffff:ffff:ffff:ffff"
    assert s.dns_capture and s.inbound_capture and not s.ipv6


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"outbound_port": 0}, "outbound_port"),
    ({"exclude_inbound_ports": (70000,)}, "exclude_inbound_ports"),
    ({"virtual_interfaces": ("eth0; -j ACCEPT",)}, "virtual_interfaces"),
    ({"virtual_interfaces": ("a" * 16,)}, "virtual_interfaces"),
    ({"exclude_outbound_cidrs": ("10.0.0.0/33",)}, "exclude_outbound_cidrs"),
    ({"probe_source_v4": "fd00::1"}, "probe_source_v4"),
    ({"probe_source_v6": "1.2.3.4"}, "probe_source_v6"),
    ({"proxy_mark": 0x1000}, "mark_mask"),
    ({"connmark": 0x539}, "differ"),
    ({"route_table": 254}, "route_table"),
])
def test_invalid_options_name_the_option(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(SpecError, match=needle):
        RedirectSpec(**kwargs)  # type: ignore[arg-type]


def test_cidrs_are_normalised_and_split_by_family() -> None:
    s = RedirectSpec(exclude_outbound_cidrs=("10.1.2.3/8", "fd00::1/64"))
    assert s.exclude_outbound_cidrs == ("10.0.0.0/8", "fd00::/64")
    assert s.cidrs(4) == ["10.0.0.0/8"] and s.cidrs(6) == ["fd00::/64"]


def test_exclusions_sit_right_before_the_redirect_they_carve_out_of() -> None:
    s = RedirectSpec(exclude_outbound_ports=(9000,), exclude_inbound_ports=(8081,),
                     exclude_outbound_cidrs=("10.0.0.0/8",))
    nat = iptables_rules.render_pod(s, 4).table("nat")
    assert nat is not None
    out = [r.args for r in nat.rules if r.chain == "MESHNODE_OUTPUT"]
    assert out[-3:] == ["-d 10.0.0.0/8 -j RETURN", "-p tcp -m tcp --dport 9000 -j RETURN",
                        "! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff "
                        "-j REDIRECT --to-ports 15001"]
    pre = [r.args for r in nat.rules if r.chain == "MESHNODE_PRERT"]
    assert pre[-2] == "-p tcp -m tcp --dport 8081 -j RETURN" and "15006" in pre[-1]
    nft = nftables_rules.render_pod(s).text()
    assert nft.index("tcp dport 9000 counter return") < nft.index("redirect to :15001")
    assert nft.index("tcp dport 8081 counter return") < nft.index("redirect to :15006")


def test_ipv4_spec_renders_no_ipv6_rules() -> None:
    text = nftables_rules.render_pod(RedirectSpec()).text()
    assert "ip6 " not in text and "::1" not in text
    assert "ip6 daddr != ::1/128" in nftables_rules.render_pod(RedirectSpec(ipv6=True)).text()


def test_profiles_do_not_share_names() -> None:
    ours = nftables_rules.render_pod(RedirectSpec()).text()
    assert "istio" not in ours.lower()
    assert "MESHNODE_OUTPUT" in iptables_rules.render_pod(RedirectSpec(), 4).text()


def test_host_probe_table_keeps_its_set_on_reapply() -> None:
    text = nftables_rules.render_host_probe(RedirectSpec(ipv6=True)).text()
    assert "delete table" not in text and "flush chain" in text
    assert "meshnode-probes-v4" in text and "meshnode-probes-v6" in text
