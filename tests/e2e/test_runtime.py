"""Tests of the containerd e2e harness itself, with a bridge + host-local chain."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.runtime import (
    CniError,
    CtrError,
    HarnessError,
    Runtime,
    bridge_plugin,
    netns_names,
    processes_of,
)

pytestmark = pytest.mark.kernel

SUBNET = "198.18.128.0/24"

FAILING_PLUGIN = """#!/bin/sh
# Fails ADD with a CNI error; DEL/CHECK succeed so the harness can clean up.
cat >/dev/null
if [ "$CNI_COMMAND" = ADD ]; then
  echo '{"cniVersion":"1.0.0","code":11,"msg":"nope"}'
  exit 1
fi
exit 0
"""

# Records what it was called with, passes prevResult through (a well-behaved chained plugin).
RECORDING_PLUGIN = """#!/usr/bin/python3
import json, os, sys
conf = json.load(sys.stdin)
env = {k: v for k, v in os.environ.items() if k.startswith("CNI_")}
with open(%r, "a") as f:
    f.write(json.dumps({"env": env, "conf": conf}) + "\\n")
if env["CNI_COMMAND"] == "ADD":
    print(json.dumps(conf.get("prevResult") or {"cniVersion": conf["cniVersion"]}))
"""


def _script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def _recorder(rt: Runtime, tmp_path: Path) -> Path:
    log = tmp_path / "calls.jsonl"
    rt.add_plugin(_script(tmp_path / "recorder", RECORDING_PLUGIN % str(log)), "recorder")
    return log


def _calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _node_veths(rt: Runtime) -> list[str]:
    out = subprocess.run(["ip", "-n", rt.node, "-o", "link", "show", "type", "veth"],
                         capture_output=True, text=True, check=True).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def _leases(rt: Runtime, network: str = "mne2e") -> list[str]:
    d = rt.cache_dir / "networks" / network
    return sorted(p.name for p in d.iterdir() if p.name[0].isdigit()) if d.is_dir() else []


def test_container_gets_ip_in_subnet_and_its_own_netns(runtime: Runtime) -> None:
    runtime.write_conflist([bridge_plugin(SUBNET)])
    c = runtime.run("a")

    ip = c.ip()
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(SUBNET)
    result = c.result()
    assert result is not None and result["ips"][0]["address"].startswith(f"{ip}/")

    ns = c.netns_path()
    assert os.readlink(ns).startswith("net:[")
    inodes = {c.netns_inode(), os.stat(runtime.node_netns_path).st_ino,
              os.stat("/proc/self/ns/net").st_ino}
    assert len(inodes) == 3, "container, node and host netns must all differ"

    # The bridge lives in the node netns, never on the host.
    assert subprocess.run(["ip", "-n", runtime.node, "link", "show", "mne2e0"],
                          capture_output=True).returncode == 0
    assert subprocess.run(["ip", "link", "show", "mne2e0"], capture_output=True).returncode != 0
    assert "eth0" in c.exec(["ip", "-o", "link"], check=True).stdout


def test_two_containers_reach_each_other(runtime: Runtime) -> None:
    runtime.write_conflist([bridge_plugin(SUBNET)])
    server = runtime.run("srv", ["httpd", "-f", "-p", "8080", "-h", "/www"])
    client = runtime.run("cli")
    assert server.ip() != client.ip()

    deadline = time.monotonic() + 10
    while True:
        # busybox-static's wget segfaults (static glibc); speak HTTP through nc instead.
        got = client.exec(["nc", "-w", "2", server.ip(), "8080"],
                          input="GET / HTTP/1.0\r\n\r\n")
        if got.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got.stdout.startswith("HTTP/1.") and got.stdout.endswith("mne2e-ok\n"), got


def test_delete_runs_cni_del_and_releases_the_ip(runtime: Runtime, tmp_path: Path) -> None:
    # A one-address range: the second container can only get it once the first released it.
    only = "198.18.128.10"
    log = _recorder(runtime, tmp_path)
    runtime.write_conflist([bridge_plugin(SUBNET, range_start=only, range_end=only),
                            {"type": "recorder"}])
    assert _node_veths(runtime) == []
    a = runtime.run("a")
    assert a.ip() == only
    assert len(_node_veths(runtime)) == 1 and _leases(runtime) == [only]
    with pytest.raises(CtrError):
        runtime.run("b")  # the range is exhausted
    assert _leases(runtime) == [only]

    runtime.delete("a")
    assert _node_veths(runtime) == []
    assert _leases(runtime) == []
    dels = [c for c in _calls(log) if c["env"]["CNI_COMMAND"] == "DEL"]
    assert dels, "DEL must reach the chain"
    last = dels[-1]
    assert last["env"]["CNI_CONTAINERID"] == "mne2e-a"
    assert last["env"]["CNI_NETNS"].startswith("/proc/")  # the task was still alive
    assert last["conf"]["prevResult"]["ips"][0]["address"] == f"{only}/24"

    c = runtime.run("c")
    assert c.ip() == only
    assert runtime.ctr("container", "list", "-q").stdout.split() == ["c"]


@pytest.mark.parametrize("cni_args", [None, {"K8S_POD_NAME": "p", "K8S_POD_NAMESPACE": "ns"}],
                         ids=["ctr-cni", "harness-cni"])
def test_failing_plugin_makes_run_fail(runtime: Runtime, tmp_path: Path,
                                       cni_args: dict[str, str] | None) -> None:
    runtime.add_plugin(_script(tmp_path / "fail", FAILING_PLUGIN), "failing")
    runtime.write_conflist([bridge_plugin(SUBNET), {"type": "failing"}])
    with pytest.raises(CniError if cni_args else CtrError, match="nope") as info:
        runtime.run("bad", cni_args=cni_args)
    assert "nope" in info.value.stderr
    assert isinstance(info.value, HarnessError)
    # Nothing is left behind: no task, no container, no veth, no lease.
    assert runtime.ctr("container", "list", "-q").stdout.split() == []
    assert runtime.task_pid("bad") is None
    assert _node_veths(runtime) == []
    assert _leases(runtime) == []


def test_cni_args(runtime: Runtime, tmp_path: Path) -> None:
    log = _recorder(runtime, tmp_path)
    runtime.write_conflist([bridge_plugin(SUBNET), {"type": "recorder"}])

    # ctr 1.6's own CNI path passes no CNI_ARGS at all.
    plain = runtime.run("plain")
    assert [c["env"]["CNI_ARGS"] for c in _calls(log)] == [""]

    args = {"K8S_POD_NAME": "web-0", "K8S_POD_NAMESPACE": "shop", "K8S_POD_UID": "u-1",
            "K8S_POD_INFRA_CONTAINER_ID": "mne2e-pod"}
    pod = runtime.run("pod", cni_args=args)
    assert ipaddress.ip_address(pod.ip()) in ipaddress.ip_network(SUBNET)
    assert pod.netns_inode() != plain.netns_inode()
    add = _calls(log)[-1]
    assert add["env"]["CNI_COMMAND"] == "ADD"
    assert add["env"]["CNI_ARGS"] == ("IgnoreUnknown=1;K8S_POD_NAME=web-0;K8S_POD_NAMESPACE=shop;"
                                      "K8S_POD_UID=u-1;K8S_POD_INFRA_CONTAINER_ID=mne2e-pod")
    assert add["env"]["CNI_CONTAINERID"] == "mne2e-pod"
    assert add["conf"]["prevResult"]["ips"][0]["address"].startswith(pod.ip() + "/")
    # The task runs in the netns the chain configured.
    assert pod.exec(["cat", "/proc/self/net/dev"], check=True).stdout.count("eth0") == 1
    assert pod.netns_path() == f"/proc/{runtime.task_pid('pod')}/ns/net"

    runtime.delete("pod")
    dele = _calls(log)[-1]
    assert dele["env"]["CNI_COMMAND"] == "DEL"
    assert dele["env"]["CNI_ARGS"] == add["env"]["CNI_ARGS"]
    assert dele["conf"]["prevResult"] == add["conf"]["prevResult"]
    assert len(_node_veths(runtime)) == 1  # only "plain" is left


def test_teardown_leaves_nothing(e2e_rootfs: Path) -> None:
    with Runtime(e2e_rootfs) as rt:
        rt.write_conflist([bridge_plugin(SUBNET)])
        rt.run("a")
        rt.run("b", cni_args={"K8S_POD_NAME": "b", "K8S_POD_NAMESPACE": "default"})
        containerd_pid = rt.pid
        assert containerd_pid and processes_of(str(rt.tmp))
        cgroups = list(Path("/sys/fs/cgroup").glob(f"*/{rt.tag}-a"))
        assert cgroups or list(Path("/sys/fs/cgroup").glob(f"{rt.tag}-a"))
    assert rt.node not in netns_names()
    assert processes_of(str(rt.tmp)) == []
    assert not rt.tmp.exists()
    assert not list(Path("/sys/fs/cgroup").glob(f"*/{rt.tag}*"))
    assert not Path(f"/proc/{containerd_pid}").exists() or \
        "containerd" not in Path(f"/proc/{containerd_pid}/cmdline").read_text(errors="replace")
