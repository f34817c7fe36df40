"""The agent config's optional `controlplane` section."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ControlPlaneSection, load
from core.config import ConfigError


def write(tmp: Path, text: str) -> str:
    p = tmp / "agent.yaml"
    p.write_text(text)
    return str(p)


def test_absent_means_no_control_plane(tmp_path: Path) -> None:
    assert load(write(tmp_path, "workers: 2\n")).controlplane is None


def test_section_is_typed(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "controlplane:\n  address: cp:15012\n  root_cert: /r.pem\n"
                               "  token_file: /t\n  node_name: node1\n"))
    assert cfg.controlplane == ControlPlaneSection(address="cp:15012", root_cert="/r.pem",
                                                   token_file="/t", node_name="node1")


@pytest.mark.parametrize(("body", "error"), [
    ("  root_cert: /r.pem\n  token: x\n", "address and root_cert are required"),
    ("  address: cp:1\n  root_cert: /r\n", "exactly one of token and token_file"),
    ("  address: cp:1\n  root_cert: /r\n  token: x\n  token_file: /t\n", "exactly one"),
    ("  address: cp:1\n  root_cert: /r\n  token: x\n  tokn: y\n", "controlplane.tokn: unknown"),
    ("  address: 5\n", "controlplane.address: expected str"),
])
def test_bad_sections_name_the_problem(tmp_path: Path, body: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load(write(tmp_path, "controlplane:\n" + body))


def test_addresses_are_checked_and_named(tmp_path: Path) -> None:
    ok = load(write(tmp_path, "http_address: '[::1]:15021'\ncontrolplane:\n"
                              "  address: 'cp.meshnode-system.svc:15012'\n"
                              "  ca_address: '[2001:db8::1]:15012'\n"
                              "  root_cert: /r.pem\n  token: x\n"))
    assert ok.http_address == "[::1]:15021"
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, "admin_address: x\n"))
    assert str(e.value) == "config: admin_address: unknown key"  # an agent key, not a proxy one
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, "controlplane:\n  address: cp\n  root_cert: /r\n  token: x\n"))
    assert str(e.value) == "config: controlplane.address: 'cp' is not HOST:PORT"
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, "mesh_socket: /run/a.sock\ncni_socket: /run/a.sock\n"
                             "controlplane:\n  address: cp:1\n  root_cert: /r\n  token: x\n"))
    assert str(e.value) == "config: mesh_socket: the same path as cni_socket"
