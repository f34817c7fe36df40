"""`meshnode check`: on this machine (and nothing on it changes), and on node file trees
built for each case (`--root`): a Cilium socket LB, an old kernel, cgroup v1 only, no CNI."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from testing.agent_harness import REPO
from tests.cli.clirun import meshnode

NAMES = ["kernel", "iptables", "nftables", "cgroup v2", "bpffs", "btf / headers",
         "primary CNI", "conflicts", "capture backend"]
UNIFIED = ("30 1 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n"
           "31 1 0:27 / /sys/fs/bpf rw,nosuid shared:5 - bpf bpf rw,mode=700\n")
CGROUP_V1 = "30 1 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
CALICO = {"cniVersion": "0.3.1", "name": "k8s-pod-network",
          "plugins": [{"type": "calico"}, {"type": "portmap"}]}
CILIUM = {"cniVersion": "0.3.1", "name": "cilium", "plugins": [{"type": "cilium-cni"}]}


def node_tree(root: Path, *, release: str = "6.1.0-18-amd64", mountinfo: str = UNIFIED,
              conflist: dict[str, Any] | None = None, name: str = "10-calico.conflist",
              headers: bool = True, btf: bool = True) -> Path:
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "proc/sys/kernel/osrelease").write_text(release + "\n")
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/mountinfo").write_text(mountinfo)
    if conflist is not None:
        (root / "etc/cni/net.d").mkdir(parents=True)
        (root / "etc/cni/net.d" / name).write_text(json.dumps(conflist))
    if headers:
        (root / f"lib/modules/{release}/build").mkdir(parents=True)
    if btf:
        (root / "sys/kernel/btf").mkdir(parents=True)
        (root / "sys/kernel/btf/vmlinux").write_text("")
    return root


def check(root: Path, *args: str, code: int) -> dict[str, Any]:
    r = meshnode("check", "--root", str(root), *args, "-o", "json")
    assert r.returncode == code, (r.stdout, r.stderr)
    out: dict[str, Any] = json.loads(r.stdout)
    assert [c["name"] for c in out["checks"]] == NAMES
    return out


def by_name(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in out["checks"]}


def test_a_good_node_passes(tmp_path: Path) -> None:
    root = node_tree(tmp_path, conflist=CALICO)
    out = check(root, code=0)
    c = by_name(out)
    assert out["ok"] and out["backend"] == "iptables"
    assert c["kernel"]["status"] == "pass" and "6.1.0-18-amd64" in c["kernel"]["detail"]
    assert c["primary CNI"]["status"] == "pass"
    assert c["primary CNI"]["detail"].startswith("10-calico.conflist: calico -> portmap")
    assert c["cgroup v2"]["status"] == "pass" and c["bpffs"]["status"] == "pass"
    assert c["capture backend"] == {**c["capture backend"], "status": "pass",
                                    "detail": "iptables: requirements met"}


def test_cilium_socket_lb_is_a_failed_check_until_limited_to_the_host(tmp_path: Path) -> None:
    root = node_tree(tmp_path, conflist=CILIUM, name="05-cilium.conflist")
    pins = root / "sys/fs/bpf/tc/globals"
    pins.mkdir(parents=True)
    for m in ("cilium_lb4_services_v2", "cilium_lb4_reverse_sk", "cilium_ct4_global"):
        (pins / m).write_text("")
    out = check(root, code=1)
    conflict = by_name(out)["conflicts"]
    assert conflict["status"] == "fail" and "socket-level load balancing" in conflict["detail"]
    assert "cilium_lb4_reverse_sk" in conflict["detail"]
    assert "socketLB.hostNamespaceOnly=true" in conflict["fix"]
    table = meshnode("check", "--root", str(root))
    assert table.returncode == 1 and "✘   conflicts" in table.stdout
    assert "-> Cilium: set socketLB.hostNamespaceOnly=true" in table.stdout
    # cilium-config says the socket LB stays in the host netns: fine for meshnode.
    cm = tmp_path / "cilium-config.yaml"
    cm.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "data": {
        "kube-proxy-replacement": "true", "bpf-lb-sock-hostns-only": "true"}}))
    ok = by_name(check(root, "--cilium-config", str(cm), code=0))["conflicts"]
    assert ok["status"] == "pass" and "host netns" in ok["detail"]
    # No maps pinned, but the config turns the socket LB on (kube-proxy replacement).
    shutil.rmtree(pins)
    cm.write_text(yaml.safe_dump({"data": {"kube-proxy-replacement": "true"}}))
    assert by_name(check(root, "--cilium-config", str(cm), code=1))["conflicts"]["status"] \
        == "fail"


def test_istio_cni_in_the_chain_is_a_conflict(tmp_path: Path) -> None:
    chain = {**CALICO, "plugins": [*CALICO["plugins"], {"type": "istio-cni"}]}
    c = by_name(check(node_tree(tmp_path, conflist=chain), code=1))["conflicts"]
    assert "istio-cni" in c["detail"]


def test_old_kernel_and_cgroup_v1_fail_the_ebpf_backend(tmp_path: Path) -> None:
    root = node_tree(tmp_path, release="5.4.0-150-generic", mountinfo=CGROUP_V1,
                     conflist=CALICO, headers=False)
    out = check(root, "--backend", "ebpf", code=1)
    c = by_name(out)
    assert c["kernel"]["detail"] == "5.4.0-150-generic: backends iptables, nftables supported"
    backend = c["capture backend"]
    assert backend["status"] == "fail" and "kernel >= 5.9" in backend["detail"]
    assert "cgroup v2" in backend["detail"] and "bpffs" in backend["detail"]
    assert "capture.fallback: iptables" in backend["fix"]
    # With a fallback configured, the agent starts on iptables: a warning, exit 0.
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml.safe_dump({"capture": {"backend": "ebpf", "fallback": "iptables"}}))
    out = check(root, "--config", str(cfg), code=0)
    assert out["backend"] == "ebpf" and out["fallback"] == "iptables"
    assert by_name(out)["capture backend"]["status"] == "warn"
    # The iptables backend does not need any of that: information only.
    plain = by_name(check(root, code=0))
    assert plain["cgroup v2"]["status"] == "info" and plain["bpffs"]["status"] == "info"


def test_no_primary_cni_fails(tmp_path: Path) -> None:
    out = check(node_tree(tmp_path), code=1)
    cni = by_name(out)["primary CNI"]
    assert cni["status"] == "fail" and "/etc/cni/net.d does not exist" in cni["detail"]
    (tmp_path / "etc/cni/net.d").mkdir(parents=True)
    (tmp_path / "etc/cni/net.d/10-broken.conflist").write_text("{not json")
    cni = by_name(check(tmp_path, code=1))["primary CNI"]
    assert "no valid CNI config" in cni["detail"] and "10-broken.conflist" in cni["detail"]


def _host_state() -> dict[str, str]:
    """What `check` could change and other tests on this machine do not touch meanwhile."""
    def listing(path: str) -> str:
        return ",".join(sorted(os.listdir(path))) if os.path.isdir(path) else "-"

    names = Path("/proc/net/ip_tables_names")
    return {"legacy_tables": names.read_text() if names.exists() else "-",
            "bpffs": listing("/sys/fs/bpf"), "cni": listing("/etc/cni/net.d"),
            "iptables": hashlib.sha256(subprocess.run(
                ["iptables-save"], capture_output=True, check=False).stdout).hexdigest()}


# A syscall that changes something: a file opened for writing (but /dev/null, the child's
# stdin), a directory or file made, removed or renamed, a mount, a module, a BPF object.
CHANGES = re.compile(
    r"openat\([^\n]*\"(?!/dev/null\")[^\"]*\", [^\n]*O_(?:WRONLY|RDWR|CREAT|TRUNC)[^\n]*\) = \d"
    r"|\b(?:mkdir(?:at)?|unlink(?:at)?|rename(?:at2?)?|mount|umount2|init_module"
    r"|finit_module)\("
    r"[^\n]*= 0"
    r"|bpf\(BPF_(?:PROG_LOAD|MAP_CREATE|OBJ_PIN|PROG_ATTACH|LINK_CREATE|MAP_UPDATE_ELEM"
    r"|MAP_DELETE_ELEM)")


@pytest.mark.kernel
def test_on_this_machine_nothing_changes(tmp_path: Path) -> None:
    before = _host_state()
    r = meshnode("check", "-o", "json")
    out = json.loads(r.stdout)
    assert [c["name"] for c in out["checks"]] == NAMES
    failed = [c for c in out["checks"] if c["status"] == "fail"]
    assert r.returncode == (1 if failed else 0) and out["ok"] == (not failed)
    assert by_name(out)["kernel"]["facts"]["release"] == os.uname().release
    if shutil.which("strace"):
        # Every syscall of the command and the tools it runs, for every backend's checks.
        trace = tmp_path / "trace"
        for backend in ("iptables", "nftables", "ebpf"):
            subprocess.run(["strace", "-f", "-qq", "-o", str(trace), "-e",
                            "trace=openat,mkdir,mkdirat,unlink,unlinkat,rename,renameat,"
                            "renameat2,mount,umount2,init_module,finit_module,bpf",
                            sys.executable, "-m", "cli.main", "check", "--backend", backend],
                           cwd=REPO, capture_output=True, check=False,
                           env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
            changes = CHANGES.findall(trace.read_text())
            assert changes == [], (backend, changes[:5])
    else:
        for backend in ("nftables", "ebpf"):
            meshnode("check", "--backend", backend)
    assert _host_state() == before
