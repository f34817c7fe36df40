"""The capture options have one definition (agent/redirect/spec.py CaptureOptions): the
agent config's `capture:` keys, a pod's overrides, the `meshnode redirect` flags and the
Helm chart's `capture` values all come from it. And the config's enums read and write the
same strings as before, with the same one-line errors."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from agent import config as agent_config
from agent.config import AgentConfig, CaptureConfig, Fallback, SelectionMode
from agent.redirect.spec import (
    CAPTURE_OPTIONS,
    Backend,
    CaptureOptions,
    IptablesFlavour,
    Profile,
    RedirectSpec,
    SpecError,
    with_overrides,
)
from cli import redirect_cmd
from core.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "meshnode"
NOT_OPTIONS = {"backend", "fallback", "iptables_flavour", "profile"}  # the backend's settings


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


def test_the_options_are_the_config_keys_and_spec_fields() -> None:
    assert CAPTURE_OPTIONS == ("ipv6", "dns_capture", "inbound_capture", "virtual_interfaces",
                               "exclude_outbound_cidrs", "exclude_inbound_ports",
                               "exclude_outbound_ports")
    config_keys = {f.name for f in dataclasses.fields(CaptureConfig)}
    assert config_keys == set(CAPTURE_OPTIONS) | NOT_OPTIONS
    spec_fields = {f.name for f in dataclasses.fields(RedirectSpec)}
    assert set(CAPTURE_OPTIONS) <= spec_fields


def test_config_spec_and_overrides() -> None:
    cap = CaptureConfig(profile="istio", ipv6="auto", dns_capture=False,
                        virtual_interfaces=["veth0"], exclude_outbound_cidrs=["10.0.0.0/8"],
                        exclude_inbound_ports=[15090], exclude_outbound_ports=[9000])
    assert cap.spec() == RedirectSpec(
        profile=Profile.ISTIO, ipv6=False, dns_capture=False, virtual_interfaces=("veth0",),
        exclude_outbound_cidrs=("10.0.0.0/8",), exclude_inbound_ports=(15090,),
        exclude_outbound_ports=(9000,))
    assert CaptureConfig(ipv6=True).spec().ipv6 is True
    pod = with_overrides(cap.spec(), {"ipv6": True, "exclude_outbound_ports": [1, 2]})
    assert (pod.ipv6, pod.exclude_outbound_ports, pod.profile) == (True, (1, 2), Profile.ISTIO)
    with pytest.raises(SpecError, match=r"capture: unknown option\(s\) \['backend'\]"):
        with_overrides(cap.spec(), {"backend": "ebpf"})


def _parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    redirect_cmd.add_spec_flags(p)
    return p.parse_args(list(argv))


def test_every_option_has_its_cli_flag() -> None:
    flags = {f.metadata["flag"] for f in dataclasses.fields(CaptureOptions)}
    assert flags == {"--ipv6", "--no-dns", "--ingress", "--virtual-interfaces",
                     "--exclude-outbound-cidrs", "--exclude-inbound-ports",
                     "--exclude-outbound-ports"}
    assert redirect_cmd.spec_from_args(_parse()) == RedirectSpec()
    spec = redirect_cmd.spec_from_args(_parse(
        "--profile", "istio", "--ipv6", "--no-dns", "--ingress", "--virtual-interfaces",
        "veth0,veth1", "--exclude-outbound-cidrs", "10.0.0.0/8", "--exclude-inbound-ports",
        "15090", "--exclude-outbound-ports", "80, 443", "--kubelet-uid", "7"))
    assert spec == RedirectSpec(
        profile=Profile.ISTIO, ipv6=True, dns_capture=False, inbound_capture=False,
        virtual_interfaces=("veth0", "veth1"), exclude_outbound_cidrs=("10.0.0.0/8",),
        exclude_inbound_ports=(15090,), exclude_outbound_ports=(80, 443), kubelet_uid=7)
    with pytest.raises(SystemExit):
        _parse("--exclude-outbound-ports", "http")


def test_the_chart_exposes_every_option() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["capture"]
    assert set(values) == {camel(n) for n in (*CAPTURE_OPTIONS, *NOT_OPTIONS)}
    template = (CHART / "templates" / "configmap.yaml").read_text()
    mapped = dict(re.findall(r'"(\w+)" \$c\.(\w+)', template))
    assert mapped == {n: camel(n) for n in (*CAPTURE_OPTIONS, *NOT_OPTIONS)}
    # and the chart's defaults are the config's
    defaults = CaptureConfig()
    for name in CAPTURE_OPTIONS:
        assert values[camel(name)] == getattr(defaults, name), name


def test_enums_read_and_write_the_same_strings(tmp_path: Path) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text("capture: {backend: ebpf, fallback: nftables, iptables_flavour: legacy, "
                 "profile: istio}\nselection: {mode: namespaces, namespaces: [shop]}\n")
    cfg = agent_config.load(str(f))
    c = cfg.capture
    assert (c.backend, c.fallback, c.iptables_flavour, c.profile, cfg.selection.mode) == (
        Backend.EBPF, Fallback.NFTABLES, IptablesFlavour.LEGACY, Profile.ISTIO,
        SelectionMode.NAMESPACES)
    assert [str(v) for v in (c.backend, c.fallback, c.iptables_flavour, c.profile)] == [
        "ebpf", "nftables", "legacy", "istio"]
    assert c.backend == "ebpf" and f"{c.profile}" == "istio"
    assert cfg.selection.captures("shop") and not cfg.selection.captures("other")
    assert not AgentConfig().capture.fallback  # "" = no fallback
    assert CaptureConfig(backend="nftables").backend is Backend.NFTABLES  # built in code


@pytest.mark.parametrize(("capture", "error"), [
    ("backend: foo", "capture.backend: 'foo' is not one of ['iptables', 'nftables', 'ebpf']"),
    ("backend: 5", "capture.backend: expected str, got int"),
    ("fallback: ebpf", "capture.fallback: 'ebpf' must be iptables or nftables (or empty)"),
    ("fallback: foo", "capture.fallback: 'foo' must be iptables or nftables (or empty)"),
    ("iptables_flavour: x", "capture.iptables_flavour: must be auto, nft or legacy"),
    ("profile: envoy", "capture.profile: 'envoy' is not one of ['meshnode', 'istio']"),
    ("ipv6: maybe", "capture.ipv6: must be true, false or auto"),
])
def test_a_bad_value_is_one_line_naming_the_key(tmp_path: Path, capture: str,
                                                error: str) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text(f"capture:\n  {capture}\n")
    with pytest.raises(ConfigError) as err:
        agent_config.load(str(f))
    assert str(err.value) == f"config: {error}"


def test_a_bad_selection_mode(tmp_path: Path) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text("selection: {mode: some}\n")
    with pytest.raises(ConfigError, match=r"^config: selection.mode: must be all or namespaces$"):
        agent_config.load(str(f))
