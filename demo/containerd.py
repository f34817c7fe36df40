"""A private containerd per demo node: pods started with `ctr run --cni` from a busybox
rootfs, networked by bridge + host-local + meshnode-cni (the product copy of the harness in
tests/e2e/runtime.py, cut down to what the demo needs).

containerd, its shims, runc and every CNI plugin run inside the node's netns, so the bridge
plugin builds the pod bridge there, never on the host. Nothing is written outside our temp
dir: containerd runs in a private mount namespace whose /run is an overlay (the v2 shim's
socket dir /run/containerd/s is hard-coded), and every `ctr` call runs in a private mount
namespace where our net.d, plugin dir and CNI cache are bind-mounted over /etc/cni/net.d,
/opt/cni/bin and /var/lib/cni (the paths ctr 1.6 hard-codes) on top of overlays, so not even
the mount points are created on the host.

CNI DEL: ctr 1.6 runs DEL only for a foreground `ctr run`; for a detached pod nothing does,
so `close()` runs the DEL chain itself while the task is alive (reverse order, the cached
ADD result as prevResult, as CRI would), then kills and deletes task and container.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demo.procs import REPO

SYSTEM_CNI_DIR = Path("/usr/lib/cni")
CTR_NAMESPACE = "meshnode-demo"
CNI_PATH = "/opt/cni/bin:/usr/lib/cni"  # what Debian's ctr 1.6 sets
APPLETS = ("sh", "sleep", "wget", "httpd", "nc", "ip", "cat", "echo", "ls", "true", "dd")

_NS_SCRIPT = """\
set -eu
T={tmp}
ovl() {{
  n=$(printf %s "$1" | tr / _)
  mkdir -p "$T/ov/$2$n/u" "$T/ov/$2$n/w"
  mount -t overlay {tag}-ov -o "lowerdir=$1,upperdir=$T/ov/$2$n/u,workdir=$T/ov/$2$n/w" "$1"
}}
{body}
exec "$@"
"""
_CONTAINERD_BODY = """\
ovl /run d
mkdir -p /run/containerd
mount -t tmpfs {tag}-run /run/containerd
"""
_CTR_BODY = """\
ovl /etc c; ovl /opt c; ovl /var/lib c
mkdir -p /etc/cni/net.d /opt/cni/bin /var/lib/cni
mount --bind "$T/cni/net.d" /etc/cni/net.d
mount --bind "$T/cni/bin" /opt/cni/bin
mount --bind "$T/cni/cache" /var/lib/cni
"""
# Only what `ctr run` needs: no CRI, no tracing, no exotic snapshotters (faster start).
_CONFIG = """\
version = 2
root = "{tmp}/root"
state = "{tmp}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{tmp}/run/containerd.sock"
[ttrpc]
  address = "{tmp}/run/containerd.sock.ttrpc"
"""


def write_isolation(tmp: Path, tag: str) -> None:
    """A private containerd's config and the two mount-namespace wrappers (containerd-ns.sh
    and ctr-ns.sh, taking the command to exec) that keep its state and CNI dirs in `tmp`
    without touching the host's; mounts carry `tag` so a leftover can be found."""
    (tmp / "config.toml").write_text(_CONFIG.format(tmp=tmp))
    for name, body in (("containerd-ns.sh", _CONTAINERD_BODY), ("ctr-ns.sh", _CTR_BODY)):
        (tmp / name).write_text(_NS_SCRIPT.format(tmp=tmp, tag=tag, body=body.format(tag=tag)))


def build_rootfs(dest: Path, payload_bytes: int = 0,
                 applets: Sequence[str] = APPLETS) -> Path:
    """A busybox rootfs (static binary + applet links), with /www/data of ~`payload_bytes`
    for the demo's web server to serve."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    for d in ("bin", "proc", "sys", "dev", "tmp", "etc", "run", "var", "www", "root"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, dest / "bin" / "busybox")
    for applet in applets:
        (dest / "bin" / applet).symlink_to("busybox")
    # Text, so that the response reads back cleanly through `ctr task exec`'s stdout.
    line = b"meshnode demo payload, served by busybox httpd\n"
    (dest / "www" / "data").write_bytes(line * (payload_bytes // len(line)))
    (dest / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (dest / "etc" / "group").write_text("root:x:0:\n")
    (dest / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    return dest


def _run(argv: Sequence[str], *, env: dict[str, str] | None = None, input: str = "",
         timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), env=env, input=input, capture_output=True, text=True,
                          timeout=timeout, check=False)


def kill_pid(pid: int, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after `grace` s: only for processes of this demo, by PID."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        if not Path(f"/proc/{pid}").exists() or _zombie(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except OSError:
        return True


def processes_under(path: str) -> list[int]:
    """Live processes whose command line names `path`: the shims containerd forked for us
    (they outlive containerd by design), found by our own temp dir."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            if path in cmdline and not _zombie(int(entry.name)):
                found.append(int(entry.name))
    return found


def netns_names() -> list[str]:
    out = _run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


@dataclass
class Pod:
    name: str
    ip: str
    pid: int
    conflist: dict[str, Any]

    @property
    def netns(self) -> str:
        return f"/proc/{self.pid}/ns/net"


class Containerd:
    """containerd for one node netns (`node` is its name under /var/run/netns)."""

    def __init__(self, node: str, workdir: Path, rootfs: Path) -> None:
        self.node, self.rootfs = node, rootfs
        self.tag = f"mndemo-{os.getpid()}-{secrets.token_hex(3)}"
        self.tmp = workdir
        self.pods: dict[str, Pod] = {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return str(self.tmp / "run" / "containerd.sock")

    def start(self) -> None:
        for d in ("run", "root", "state", "fifo", "ov", "cni/net.d", "cni/bin", "cni/cache"):
            (self.tmp / d).mkdir(parents=True, exist_ok=True)
        for name in ("bridge", "host-local", "loopback"):
            (self.tmp / "cni" / "bin" / name).symlink_to(SYSTEM_CNI_DIR / name)
        (self.tmp / "cni" / "bin" / "meshnode-cni").symlink_to(REPO / "cni" / "meshnode-cni")
        write_isolation(self.tmp, self.tag)
        with open(self.tmp / "containerd.log", "wb") as log:
            # Each step execs, so the PID we hold is containerd's; own session: see procs.py.
            # nsenter, not `ip netns exec`: that remounts /sys for the netns, which hides
            # the cgroup fs from containerd's shims and runc.
            self.proc = subprocess.Popen(
                ["nsenter", f"--net=/var/run/netns/{self.node}", "unshare", "-m",
                 "--propagation", "private", "sh", str(self.tmp / "containerd-ns.sh"),
                 "containerd", "--config", str(self.tmp / "config.toml")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while _run(["ctr", "--address", self.address, "version"], timeout=5).returncode:
            if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd in {self.node} did not start: {self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.tmp / "containerd.log").read_text(errors="replace")[-1500:]
        return ""

    def in_node(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        """`argv` in the node netns and ctr's private mount namespace (the plugins' view)."""
        return _run(["ip", "netns", "exec", self.node, "unshare", "-m", "--propagation",
                     "private", "sh", str(self.tmp / "ctr-ns.sh"), *argv], **kw)

    def ctr(self, *args: str, timeout: float = 30, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        p = self.in_node(["ctr", "--address", self.address, "--namespace", CTR_NAMESPACE,
                          *args], timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args[:2])} in {self.node}: {p.stderr.strip()}")
        return p

    def run(self, name: str, ip: str, subnet: str, agent_socket: str, cmd: Sequence[str]) -> Pod:
        """`ctr run --cni` a detached pod at `ip`: the conflist pins host-local to that one
        address, so the example mesh can name its workloads' IPs before the pods exist."""
        conflist = {"cniVersion": "1.0.0", "name": "demo", "plugins": [
            {"type": "bridge", "bridge": "demo0", "isGateway": True, "ipMasq": False,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet, "rangeStart": ip,
                                                         "rangeEnd": ip}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "meshnode-cni", "agent_socket": agent_socket, "timeout_seconds": 10}]}
        (self.tmp / "cni" / "net.d" / "10-demo.conflist").write_text(json.dumps(conflist))
        self.ctr("run", "--detach", "--null-io", "--cni", "--fifo-dir", str(self.tmp / "fifo"),
                 "--runc-root", str(self.tmp / "runc"), "--cgroup", f"/{self.tag}-{name}",
                 "--read-only", "--mount", "type=tmpfs,src=tmpfs,dst=/tmp,options=nosuid:nodev",
                 "--env", "PATH=/bin", "--rootfs", str(self.rootfs), name, *cmd)
        pod = Pod(name, ip, self._task_pid(name), conflist)
        self.pods[name] = pod
        # busybox wget to a local port and the proxy's in-pod listeners need loopback up.
        _run(["nsenter", f"--net={pod.netns}", "ip", "link", "set", "lo", "up"])
        return pod

    def exec(self, name: str, argv: Sequence[str], timeout: float = 20
             ) -> subprocess.CompletedProcess[str]:
        return self.ctr("task", "exec", "--exec-id", f"x{secrets.token_hex(4)}", "--fifo-dir",
                        str(self.tmp / "fifo"), name, *argv, timeout=timeout, check=False)

    def _task_pid(self, name: str) -> int:
        for line in self.ctr("task", "list").stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 3 and parts[0] == name:
                return int(parts[1])
        raise RuntimeError(f"no task for pod {name}: {self.log_tail()}")

    def cni_del(self, pod: Pod) -> None:
        """The DEL chain, reverse order, prevResult from libcni's cache (see the module doc)."""
        cid = f"{CTR_NAMESPACE}-{pod.name}"  # what ctr passed as CNI_CONTAINERID
        prev: Any = None
        with contextlib.suppress(OSError, ValueError, KeyError):
            cached = self.tmp / "cni" / "cache" / "results" / f"demo-{cid}-eth0"
            prev = json.loads(cached.read_text())["result"]
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "CNI_COMMAND": "DEL", "CNI_CONTAINERID": cid, "CNI_NETNS": pod.netns,
               "CNI_IFNAME": "eth0", "CNI_PATH": CNI_PATH, "CNI_ARGS": ""}
        for plugin in reversed(pod.conflist["plugins"]):
            conf = {**plugin, "name": "demo", "cniVersion": "1.0.0"}
            if prev is not None:
                conf["prevResult"] = prev
            self.in_node([f"/opt/cni/bin/{plugin['type']}"], env=env, input=json.dumps(conf))

    def remove(self, name: str) -> None:
        pod = self.pods.pop(name, None)
        if pod is not None:
            self.cni_del(pod)
        self.ctr("task", "kill", "--signal", "SIGKILL", name, check=False, timeout=10)
        for _ in range(50):
            if self.ctr("task", "delete", "--force", name, check=False,
                        timeout=10).returncode == 0:
                break
            time.sleep(0.1)
        self.ctr("container", "delete", name, check=False, timeout=10)

    def close(self) -> None:
        """Pods (DEL while alive), containerd, stray shims, cgroups, temp dir; carries on
        past errors so that one failure does not leave the rest behind."""
        if self.proc is not None and self.proc.poll() is None:
            for name in list(self.pods):
                with contextlib.suppress(Exception):
                    self.remove(name)
            with contextlib.suppress(Exception):  # one a Ctrl-C cut off mid `ctr run`
                for name in self.ctr("container", "list", "-q", timeout=10).stdout.split():
                    self.remove(name)
        if self.proc is not None:
            kill_pid(self.proc.pid)
            self.proc = None
        for pid in processes_under(str(self.tmp)):
            kill_pid(pid, grace=1)
        root = Path("/sys/fs/cgroup")
        for cg in [*root.glob(f"{self.tag}*"), *root.glob(f"*/{self.tag}*")]:
            with contextlib.suppress(OSError):
                for task in (cg / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(task), signal.SIGKILL)
            for _ in range(50):
                try:
                    cg.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)
        shutil.rmtree(self.tmp, ignore_errors=True)
