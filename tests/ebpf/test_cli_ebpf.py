"""`--backend ebpf` and `meshnode bpf status|maps` through the CLI, on the real kernel."""

from __future__ import annotations

import ipaddress
import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator

import pytest

from agent.redirect.ebpf.loader import PROGRAMS, Loader
from testing.lab import Node
from tests.kernel.netutil import accepted_by, tcp_connect, tcp_listener

pytestmark = pytest.mark.kernel


@pytest.fixture
def pin_dir(bpffs: str) -> Iterator[str]:
    path = os.path.join(bpffs, f"cli-{os.getpid()}")
    try:
        yield path
    finally:
        if os.path.isdir(path):
            Loader(pin_dir=path).destroy()  # the CLI leaves links pinned (attached): detach


def cli(pin_dir: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pin_dir is not None:
        env["MESHNODE_BPF_PIN_DIR"] = pin_dir
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_apply_status_maps_diff_remove(pods: tuple[Node, Node], pin_dir: str) -> None:
    client, server = pods
    flags = ["--backend", "ebpf", "--netns", client.path]
    r = cli(pin_dir, "redirect", "apply", *flags)
    assert r.returncode == 0, r.stderr
    status = json.loads(cli(pin_dir, "bpf", "status", "-o", "json").stdout)
    links = [o for o in status["objects"] if o["kind"] == "link"]
    cgroup = [o for o in links if not o["name"].startswith("sk_lookup")]
    netns = [o for o in links if o["name"].startswith("sk_lookup")]
    assert len(cgroup) == len(PROGRAMS) and all(o["cgroup_id"] for o in cgroup), status
    # inbound capture: one sk_lookup link, attached to the pod's netns
    ino = os.stat(client.path).st_ino
    assert len(netns) == 1 and netns[0]["cgroup_id"] == f"netns_ino={ino}", status
    maps = json.loads(cli(pin_dir, "bpf", "maps", "-o", "json").stdout)
    assert len(maps["pods"]) == 1
    # the pod's own addresses (IPv4 kept v4-mapped), all owned by one netns cookie
    owned = {ipaddress.IPv6Address(struct.pack("=4I", *e["formatted"]["key"]["ip"]))
             for e in maps["pod_ips"]}
    assert {a.ipv4_mapped or a for a in owned} == {ipaddress.ip_address(client.ip4),
                                                   ipaddress.ip_address(client.ip6)}, owned
    assert len({e["formatted"]["value"] for e in maps["pod_ips"]}) == 1
    assert cli(pin_dir, "redirect", "diff", *flags).returncode == 0
    proxy = tcp_listener(client.path, 15001, "127.0.0.1")
    with proxy, tcp_connect(client.path, server.ip4, 80):
        assert accepted_by(proxy) is not None  # the kernel redirected it
    assert cli(pin_dir, "redirect", "remove", *flags).returncode == 0
    assert cli(pin_dir, "redirect", "diff", *flags).returncode == 1
    maps = json.loads(cli(pin_dir, "bpf", "maps", "-o", "json").stdout)
    assert maps["pods"] == [] and maps["pod_ips"] == []
    status = json.loads(cli(pin_dir, "bpf", "status", "-o", "json").stdout)
    assert not [o for o in status["objects"] if o["name"].startswith("sk_lookup")], status


def test_missing_bpffs_is_one_clear_error(pods: tuple[Node, Node], tmp_path: object) -> None:
    client, _ = pods
    not_bpffs = os.path.join(str(tmp_path), "pins")
    r = cli(not_bpffs, "redirect", "apply", "--backend", "ebpf", "--netns", client.path)
    assert r.returncode == 2 and "bpffs" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = cli(not_bpffs, "bpf", "status")
    assert r.returncode == 2 and r.stderr.startswith("error: nothing pinned"), r.stderr
