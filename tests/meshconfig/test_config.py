"""The agent config's optional `controlplane` section."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError, ControlPlaneSection, load


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
