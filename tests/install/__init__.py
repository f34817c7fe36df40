"""Tests of agent/install: shared helpers (real files in per-test temp dirs, never /etc/cni)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent.install import InstallConfig

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "istio" / "install"
OUR_TYPE = "meshnode-cni"

CALICO = {
    "name": "k8s-pod-network",
    "cniVersion": "0.3.1",
    "plugins": [
        {"type": "calico", "log_level": "info", "ipam": {"type": "calico-ipam"}},
        {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}},
    ],
}


@dataclass
class Env:
    root: Path
    bin_dir: Path
    net_dir: Path
    plugin: Path
    state_file: Path

    def config(self, **kw: Any) -> InstallConfig:
        cfg = InstallConfig(cni_bin_dir=self.bin_dir, cni_net_dir=self.net_dir,
                            plugin_source=self.plugin, state_file=self.state_file)
        return replace(cfg, **kw)

    def write_conf(self, name: str, doc: Any, mode: int = 0o644) -> Path:
        path = self.net_dir / name
        path.write_text(json.dumps(doc, indent=2) + "\n")
        os.chmod(path, mode)
        return path

    @property
    def binary(self) -> Path:
        return self.bin_dir / OUR_TYPE


def make_env(tmp_path: Path) -> Env:
    bin_dir, net_dir = tmp_path / "opt-cni-bin", tmp_path / "etc-cni-net.d"
    bin_dir.mkdir()
    net_dir.mkdir()
    plugin = tmp_path / "meshnode-cni-build"
    plugin.write_bytes(b"#!/bin/sh\n# test stand-in for the plugin\nexit 0\n")
    os.chmod(plugin, 0o700)
    return Env(tmp_path, bin_dir, net_dir, plugin, tmp_path / "run" / "state.json")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def our_entries(path: Path) -> list[dict[str, Any]]:
    try:
        doc = read_json(path)
    except (OSError, ValueError):
        return []
    return [p for p in doc.get("plugins", []) if p.get("type") == OUR_TYPE]


def wait_until(pred: Callable[[], bool], timeout: float = 1.0, step: float = 0.01) -> float:
    """Seconds until `pred()` held; AssertionError if it did not within `timeout`."""
    start = time.monotonic()
    while True:
        if pred():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(step)
