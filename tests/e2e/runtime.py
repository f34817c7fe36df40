"""A private containerd for end-to-end tests of CNI chains, isolated from the machine.

Layout (everything carries the tag ``mne2e-<pid>-<random>``):

* a "node" netns ``<tag>-node``: containerd, its shims, runc and every CNI plugin run in it,
  so the bridge plugin builds its bridge there and never on the host;
* containerd started by us as ``nsenter --net=<node> unshare -m --propagation private sh
  <tmp>/containerd-ns.sh containerd --config <tmp>/config.toml`` (each step execs, so the
  PID we hold *is* containerd). Its root, state and sockets live in the tmp dir. The v2 shim
  puts its socket under the hard-coded ``/run/containerd/s``: in containerd's private mount
  namespace ``/run`` is an overlay whose upper layer is in the tmp dir, so the host's
  ``/run`` is never written;
* every ``ctr`` call runs as ``ip netns exec <node> unshare -m --propagation private sh
  <tmp>/ctr-ns.sh ctr …``: in that private mount namespace ``/etc``, ``/opt`` and
  ``/var/lib`` are overlays (upper layer in the tmp dir), and our ``net.d``, ``bin`` and CNI
  cache dirs are bind-mounted over ``/etc/cni/net.d``, ``/opt/cni/bin`` and ``/var/lib/cni``
  (ctr 1.6 hard-codes the first two; Debian's ctr also searches ``/usr/lib/cni`` after
  ``/opt/cni/bin``; libcni's result cache and host-local's leases live in ``/var/lib/cni``).
  Nothing is created on the host, not even the mount points.

CNI arguments: ctr 1.6 calls go-cni ``Setup`` without labels, so plugins see ``CNI_ARGS=""``
and there is no flag to change that. ``run(cni_args={...})`` therefore switches to a
CRI-like path: the harness pins a fresh netns with a holder process, runs the conflist's ADD
chain itself (libcni semantics, ``CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=…"``), and starts the
container with ``ctr run --with-ns network:/proc/<holder>/ns/net``. Without ``cni_args`` the
plain ``ctr run --cni`` path is used.

CNI DEL: ctr 1.6 only runs DEL for a foreground ``ctr run`` (after the task died); for
detached containers nothing does. ``delete()`` runs the DEL chain itself while the task is
still alive (like CRI: reverse order, ``prevResult`` from libcni's cache, same container id,
ifname and args as ADD), then kills and deletes the task and the container.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

# The isolation of a private containerd is the demo's (product code): one copy.
from demo.containerd import CNI_PATH, SYSTEM_CNI_DIR, kill_pid, processes_under, write_isolation
from demo.containerd import build_rootfs as demo_rootfs

PREFIX = "mne2e"
BASE_PLUGINS = ("bridge", "host-local", "loopback")
APPLETS = ("sh", "sleep", "ip", "nc", "wget", "ifconfig", "cat", "echo", "ls", "ps", "httpd",
           "kill", "true", "false", "env", "hostname", "mkdir", "rm", "touch", "grep", "route",
           "ping", "netstat", "test", "[", "id", "printf", "head", "tail", "timeout")
CTR_NAMESPACE = "mne2e"
_TAG_RE = re.compile(rf"^{PREFIX}-(\d+)-[0-9a-f]+")

class HarnessError(RuntimeError):
    """A step of the harness failed; ``stderr`` holds what the failing tool said."""

    def __init__(self, message: str, stderr: str = "", argv: Sequence[str] = ()) -> None:
        self.stderr = stderr
        self.argv = list(argv)
        super().__init__(f"{message}: {stderr.strip()}" if stderr.strip() else message)


class CtrError(HarnessError):
    """``ctr`` exited non-zero (for ``ctr run --cni`` this includes CNI ADD failures)."""


class CniError(HarnessError):
    """A CNI plugin run by the harness itself failed; ``stderr`` is the plugin's message."""


def build_rootfs(dest: Path) -> Path:
    """The demo's busybox rootfs with the applets these tests use, and a page to serve."""
    demo_rootfs(dest, applets=APPLETS)
    (dest / "www" / "index.html").write_text("mne2e-ok\n")
    return dest


def _run(argv: Sequence[str], *, env: Mapping[str, str] | None = None, input: str | None = None,
         timeout: float = 30, check: bool = False) -> subprocess.CompletedProcess[str]:
    # stdin is never the test runner's: it is `input`, or /dev/null (EOF at once).
    proc = subprocess.run(list(argv), env=dict(env) if env is not None else None,
                          input=input if input is not None else "", capture_output=True,
                          text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise HarnessError(f"{argv[0]} exited {proc.returncode}", proc.stderr or proc.stdout,
                           argv)
    return proc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def processes_of(tag: str) -> list[int]:
    """Live (non-zombie) processes whose command line mentions `tag`: containerd, shims."""
    return processes_under(tag)


def netns_names() -> list[str]:
    out = _run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _cgroup_dirs(tag: str) -> list[Path]:
    root = Path("/sys/fs/cgroup")
    dirs = list(root.glob(f"{tag}*")) + list(root.glob(f"*/{tag}*"))
    return [d for d in dirs if d.is_dir()]


def _remove_cgroup(path: Path) -> None:
    with contextlib.suppress(OSError):
        for pid in (path / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    for _ in range(50):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)


def reap_leftovers() -> list[str]:
    """Remove what a crashed earlier run of *this harness* left, found by our prefix and a
    dead owner PID in the tag; anything whose owner is still alive is left alone."""
    removed: list[str] = []
    tmp = Path(tempfile.gettempdir())

    def dead(tag: str) -> bool:
        m = _TAG_RE.match(tag)
        if m is None:
            return False
        owner = int(m.group(1))
        return owner != os.getpid() and not _pid_alive(owner)

    tags = {p.name for p in tmp.glob(f"{PREFIX}-*") if dead(p.name)}
    tags |= {n.removesuffix("-node") for n in netns_names() if dead(n)}
    for tag in sorted(tags):
        for pid in processes_of(f"{tmp}/{tag}"):  # containerd, shims: only ours by path
            kill_pid(pid, grace=1)
            removed.append(f"pid {pid}")
        for cg in _cgroup_dirs(tag):
            _remove_cgroup(cg)
            removed.append(str(cg))
        if f"{tag}-node" in netns_names():
            _run(["ip", "netns", "delete", f"{tag}-node"])
            removed.append(f"netns {tag}-node")
        if (tmp / tag).is_dir():
            shutil.rmtree(tmp / tag, ignore_errors=True)
            removed.append(str(tmp / tag))
    return removed


@dataclass
class _Attachment:
    """One network the container was attached to: what DEL needs to undo it."""

    conflist: dict[str, Any]
    ifname: str


@dataclass
class Container:
    """A running task. ``netns_path()`` is where its network lives (``/proc/<pid>/ns/net``)."""

    runtime: Runtime
    id: str
    pid: int
    cni_id: str
    cni_args: dict[str, str] | None
    attachments: list[_Attachment] = field(default_factory=list)
    holder: subprocess.Popen[bytes] | None = None

    def netns_path(self) -> str:
        return f"/proc/{self.pid}/ns/net"

    def netns_inode(self) -> int:
        return os.stat(self.netns_path()).st_ino

    def ip(self, ifname: str = "eth0") -> str:
        """The first IPv4 address on `ifname`, read from the container's netns."""
        out = _run(["nsenter", f"--net={self.netns_path()}", "ip", "-4", "-o", "addr", "show",
                    "dev", ifname], check=True).stdout
        m = re.search(r"inet (\S+)/\d+", out)
        if not m:
            raise HarnessError(f"no IPv4 address on {ifname} in {self.id}", out)
        return m.group(1)

    def result(self, ifname: str = "eth0") -> dict[str, Any] | None:
        """The cached CNI result (libcni's cache, or ours for the cni_args path)."""
        for att in self.attachments:
            if att.ifname == ifname:
                return self.runtime.cached_result(att.conflist["name"], self.cni_id, ifname)
        return None

    def exec(self, argv: Sequence[str], timeout: float = 20, check: bool = False,
             input: str = "") -> subprocess.CompletedProcess[str]:
        """Run `argv` inside the container (``ctr task exec``) with `input` as its stdin,
        and wait for it. Output is captured; check=True raises CtrError on failure."""
        return self.runtime.ctr("task", "exec", "--exec-id", f"x{secrets.token_hex(4)}",
                                "--fifo-dir", str(self.runtime.tmp / "fifo"), self.id, *argv,
                                timeout=timeout, check=check, input=input)

    def delete(self) -> None:
        self.runtime.delete(self.id)


class Runtime:
    """A private containerd in its own node netns. Use as a context manager.

    >>> with Runtime(rootfs) as rt:
    ...     rt.write_conflist([{"type": "bridge", ...}])
    ...     c = rt.run("a")
    ...     c.ip(), c.netns_path()
    ...     rt.delete("a")
    """

    def __init__(self, rootfs: Path, *, start_timeout: float = 20.0) -> None:
        self.rootfs = Path(rootfs)
        self.tag = f"{PREFIX}-{os.getpid()}-{secrets.token_hex(3)}"
        self.node = f"{self.tag}-node"
        self.tmp = Path(tempfile.gettempdir()) / self.tag
        self.start_timeout = start_timeout
        self.containers: dict[str, Container] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self._netns_created = False

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def node_netns_path(self) -> str:
        return f"/run/netns/{self.node}"

    @property
    def address(self) -> str:
        return str(self.tmp / "run" / "containerd.sock")

    @property
    def pid(self) -> int | None:
        """containerd's PID (ours: we started it)."""
        return self._proc.pid if self._proc else None

    @property
    def net_d(self) -> Path:
        return self.tmp / "cni" / "net.d"

    @property
    def bin_dir(self) -> Path:
        return self.tmp / "cni" / "bin"

    @property
    def cache_dir(self) -> Path:
        """What ctr and the plugins see as /var/lib/cni (results cache, host-local leases)."""
        return self.tmp / "cni" / "cache"

    def __enter__(self) -> Runtime:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        reap_leftovers()
        self.tmp.mkdir(mode=0o700)
        for d in ("run", "root", "state", "fifo", "ov", "cni/net.d", "cni/bin", "cni/cache",
                  "cni/harness"):
            (self.tmp / d).mkdir(parents=True, exist_ok=True)
        for name in BASE_PLUGINS:
            self.add_plugin(SYSTEM_CNI_DIR / name, name)
        write_isolation(self.tmp, self.tag)

        _run(["ip", "netns", "add", self.node], check=True)
        self._netns_created = True
        _run(["ip", "-n", self.node, "link", "set", "lo", "up"], check=True)

        self._log = (self.tmp / "containerd.log").open("wb")
        self._proc = subprocess.Popen(
            ["nsenter", f"--net={self.node_netns_path}", "unshare", "-m", "--propagation",
             "private", "sh", str(self.tmp / "containerd-ns.sh"),
             "containerd", "--config", str(self.tmp / "config.toml")],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                raise HarnessError(f"containerd exited {self._proc.returncode}", self.log_tail())
            if _run(["ctr", "--address", self.address, "version"], timeout=5).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise HarnessError("containerd did not answer in time", self.log_tail())
            time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.tmp / "containerd.log").read_text().splitlines()[-lines:])
        return ""

    def close(self) -> None:
        """Tear everything down, in order, carrying on past errors."""
        if self._proc is not None and self._proc.poll() is None:
            for cid in list(self.containers):
                with contextlib.suppress(Exception):
                    self.delete(cid)
            with contextlib.suppress(Exception):  # anything created behind our back
                for cid in self.ctr("container", "list", "-q", timeout=10).stdout.split():
                    self._force_remove(cid)
        for c in self.containers.values():
            if c.holder is not None:
                kill_pid(c.holder.pid, grace=1)
        self.containers.clear()
        if self._proc is not None:
            kill_pid(self._proc.pid, grace=5)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        for pid in processes_of(str(self.tmp)):  # e.g. a shim whose task could not be deleted
            kill_pid(pid, grace=1)
        for cg in _cgroup_dirs(self.tag):
            _remove_cgroup(cg)
        if self._netns_created:
            _run(["ip", "netns", "delete", self.node])
            self._netns_created = False
        if self.tmp.is_dir():
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- configuration ---------------------------------------------------------------------

    def write_conflist(self, plugins: list[dict[str, Any]], name: str = "mne2e",
                       cni_version: str = "1.0.0", filename: str = "10-mne2e.conflist",
                       replace: bool = True) -> Path:
        """Write a conflist into our net.d (ctr loads every file there, in name order, as
        eth0, eth1, …). With `replace` the other files are removed first."""
        if replace:
            for old in self.net_d.iterdir():
                old.unlink()
        path = self.net_d / filename
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"cniVersion": cni_version, "name": name, "plugins": plugins},
                                  indent=2))
        tmp.rename(path)
        return path

    def add_plugin(self, path: str | Path, name: str | None = None) -> Path:
        """Make the executable `path` available as plugin type `name` (a symlink in bin)."""
        link = self.bin_dir / (name or Path(path).name)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path(path).resolve())
        return link

    def conflists(self) -> list[dict[str, Any]]:
        files = sorted(p for p in self.net_d.iterdir()
                       if p.suffix in (".conf", ".conflist", ".json"))
        out = []
        for f in files:
            data = json.loads(f.read_text())
            if "plugins" not in data:  # a single .conf
                data = {"cniVersion": data.get("cniVersion", "1.0.0"), "name": data["name"],
                        "plugins": [data]}
            out.append(data)
        return out

    # -- running things in the node ---------------------------------------------------------

    def in_node(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the node netns and ctr's private mount namespace (the plugins' view)."""
        return _run(["ip", "netns", "exec", self.node, "unshare", "-m", "--propagation",
                     "private", "sh", str(self.tmp / "ctr-ns.sh"), *argv], **kw)

    def ctr(self, *args: str, timeout: float = 60, check: bool = True,
            input: str = "") -> subprocess.CompletedProcess[str]:
        """Run ``ctr <args>`` against our containerd, in the node netns and our mount ns."""
        proc = self.in_node(["ctr", "--address", self.address, "--namespace", CTR_NAMESPACE,
                             *args], timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise CtrError(f"ctr {args[0]} {' '.join(args[1:2])} failed (exit {proc.returncode})",
                           proc.stderr, args)
        return proc

    def task_pid(self, cid: str) -> int | None:
        for line in self.ctr("task", "list").stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 3 and parts[0] == cid:
                return int(parts[1])
        return None

    def cached_result(self, network: str, cni_id: str, ifname: str) -> dict[str, Any] | None:
        for base in (self.cache_dir / "results", self.tmp / "cni" / "harness"):
            f = base / f"{network}-{cni_id}-{ifname}"
            if f.is_file():
                result: dict[str, Any] = json.loads(f.read_text())["result"]
                return result
        return None

    # -- containers ------------------------------------------------------------------------

    def run(self, container_id: str, cmd: Sequence[str] = ("sleep", "3600"),
            env: Mapping[str, str] | None = None, cni_args: Mapping[str, str] | None = None,
            loopback: bool = True, extra_ctr_args: Sequence[str] = ()) -> Container:
        """Start a detached container from the busybox rootfs, networked by the CNI chain in
        net.d. Raises CtrError/CniError (carrying the plugin's message) if ADD fails, after
        undoing what it can (DEL, task and container removal)."""
        if container_id in self.containers:
            raise HarnessError(f"container {container_id} already exists")
        cni_id = f"{CTR_NAMESPACE}-{container_id}"  # what ctr passes as CNI_CONTAINERID
        networks = [_Attachment(c, f"eth{i}") for i, c in enumerate(self.conflists())]
        base = ["run", "--detach", "--null-io", "--fifo-dir", str(self.tmp / "fifo"),
                "--runc-root", str(self.tmp / "runc"), "--cgroup", f"/{self.tag}-{container_id}",
                "--read-only", "--mount", "type=tmpfs,src=tmpfs,dst=/tmp,options=nosuid:nodev",
                "--env", "PATH=/bin"]
        for k, v in (env or {}).items():
            base += ["--env", f"{k}={v}"]
        base += list(extra_ctr_args)
        tail = ["--rootfs", str(self.rootfs), container_id, *cmd]

        if cni_args is None:
            c = Container(self, container_id, 0, cni_id, None, networks)
            proc = self.ctr(*base, "--cni", *tail, check=False)
            if proc.returncode != 0:
                self._undo_failed(c)
                raise CtrError(f"ctr run {container_id} failed", proc.stderr, base + tail)
            c.pid = self._require_pid(container_id)
            self.containers[container_id] = c
        else:
            c = self._run_with_args(container_id, cni_id, networks, dict(cni_args), base, tail)
        if loopback:
            _run(["nsenter", f"--net={c.netns_path()}", "ip", "link", "set", "lo", "up"],
                 check=True)
        return c

    def _require_pid(self, cid: str) -> int:
        pid = self.task_pid(cid)
        if not pid:
            raise HarnessError(f"no task for {cid}", self.log_tail())
        return pid

    def _run_with_args(self, cid: str, cni_id: str, networks: list[_Attachment],
                       args: dict[str, str], base: list[str], tail: list[str]) -> Container:
        # The "pause container": a process sitting in a fresh netns, made from the node's.
        # argv[0] names our tmp dir, so teardown and reap_leftovers() can find it.
        argv0 = f"{self.tmp}/netns-holder-{cid}"
        holder = subprocess.Popen(
            ["nsenter", f"--net={self.node_netns_path}", "unshare", "--net", "bash", "-c",
             'exec -a "$0" sleep infinity', argv0],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        c = Container(self, cid, holder.pid, cni_id, args, [], holder)
        node_ino = os.stat(self.node_netns_path).st_ino
        deadline = time.monotonic() + 5
        while _cmdline(holder.pid)[:1] != [argv0] or c.netns_inode() == node_ino:
            if holder.poll() is not None or time.monotonic() > deadline:
                kill_pid(holder.pid, grace=1)
                raise HarnessError("netns holder did not start")
            time.sleep(0.01)
        _run(["nsenter", f"--net={c.netns_path()}", "ip", "link", "set", "lo", "up"], check=True)
        try:
            for att in networks:
                self._cni_add(c, att)
                c.attachments.append(att)
            proc = self.ctr(*base, "--with-ns", f"network:{c.netns_path()}", *tail, check=False)
            if proc.returncode != 0:
                raise CtrError(f"ctr run {cid} failed", proc.stderr, base + tail)
        except BaseException:
            c.attachments = networks  # DEL everything, as CRI does after a failed ADD
            self._undo_failed(c)
            kill_pid(holder.pid, grace=1)
            raise
        c.pid = self._require_pid(cid)
        self.containers[cid] = c
        return c

    def _cni_env(self, c: Container, command: str, ifname: str, netns: str) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "CNI_COMMAND": command, "CNI_CONTAINERID": c.cni_id, "CNI_NETNS": netns,
               "CNI_IFNAME": ifname, "CNI_PATH": CNI_PATH, "CNI_ARGS": ""}
        if c.cni_args is not None:
            env["CNI_ARGS"] = ";".join(
                ["IgnoreUnknown=1", *(f"{k}={v}" for k, v in c.cni_args.items())])
        return env

    def _exec_plugin(self, c: Container, command: str, att: _Attachment, plugin: dict[str, Any],
                     prev: dict[str, Any] | None, netns: str) -> dict[str, Any] | None:
        conf = {**plugin, "name": att.conflist["name"],
                "cniVersion": att.conflist.get("cniVersion", "1.0.0")}
        if prev is not None:
            conf["prevResult"] = prev
        ptype = plugin["type"]
        # Resolved as ctr would: our bin dir (seen as /opt/cni/bin), then Debian's dir.
        exe = f"/opt/cni/bin/{ptype}" if (self.bin_dir / ptype).exists() else \
            f"{SYSTEM_CNI_DIR}/{ptype}"
        proc = self.in_node([exe], env=self._cni_env(c, command, att.ifname, netns),
                            input=json.dumps(conf), timeout=30)
        if proc.returncode != 0:
            msg = proc.stderr
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                err = json.loads(proc.stdout)
                msg = f'{err.get("msg", "")} {err.get("details", "")}'.strip() or proc.stdout
            raise CniError(f'plugin type="{ptype}" failed ({command.lower()})',
                           msg or proc.stdout, [exe])
        if command == "ADD" and proc.stdout.strip():
            out: dict[str, Any] = json.loads(proc.stdout)
            return out
        return prev

    def _cni_add(self, c: Container, att: _Attachment) -> None:
        prev: dict[str, Any] | None = None
        for plugin in att.conflist["plugins"]:
            prev = self._exec_plugin(c, "ADD", att, plugin, prev, c.netns_path())
        cache = self.tmp / "cni" / "harness" / f"{att.conflist['name']}-{c.cni_id}-{att.ifname}"
        cache.write_text(json.dumps({"kind": "cniCacheV1", "containerId": c.cni_id,
                                     "ifName": att.ifname, "cniArgs": c.cni_args,
                                     "networkName": att.conflist["name"], "result": prev}))

    def cni_check(self, c: Container) -> None:
        """CHECK as libcni runs it: every plugin in order, each given the cached result, with
        the netns path the runtime used at ADD (plugins compare it with prevResult's)."""
        netns = f"/proc/{c.holder.pid}/ns/net" if c.holder is not None else c.netns_path()
        for att in c.attachments:
            prev = self.cached_result(att.conflist["name"], c.cni_id, att.ifname)
            for plugin in att.conflist["plugins"]:
                self._exec_plugin(c, "CHECK", att, plugin, prev, netns)

    def cni_del(self, c: Container, netns: str | None = None) -> None:
        """Run every attachment's DEL chain (reverse order, prevResult from the cache).
        Keeps going after a failing plugin and raises the first error at the end."""
        netns = c.netns_path() if netns is None else netns
        first: CniError | None = None
        for att in reversed(c.attachments):
            name = att.conflist["name"]
            prev = self.cached_result(name, c.cni_id, att.ifname)
            for plugin in reversed(att.conflist["plugins"]):
                try:
                    self._exec_plugin(c, "DEL", att, plugin, prev, netns)
                except CniError as exc:
                    first = first or exc
            for base in (self.cache_dir / "results", self.tmp / "cni" / "harness"):
                with contextlib.suppress(FileNotFoundError):
                    (base / f"{name}-{c.cni_id}-{att.ifname}").unlink()
        if first is not None:
            raise first

    def _undo_failed(self, c: Container) -> None:
        pid = self.task_pid(c.id)
        netns = f"/proc/{pid}/ns/net" if pid else (c.netns_path() if c.holder else "")
        with contextlib.suppress(HarnessError):
            self.cni_del(c, netns)
        self._force_remove(c.id)

    def _force_remove(self, cid: str) -> None:
        self.ctr("task", "kill", "--signal", "SIGKILL", cid, check=False, timeout=10)
        for _ in range(50):
            if self.ctr("task", "delete", "--force", cid, check=False,
                        timeout=10).returncode == 0 or self.task_pid(cid) is None:
                break
            time.sleep(0.1)
        self.ctr("container", "delete", cid, check=False, timeout=10)

    def delete(self, container_id: str) -> None:
        """CNI DEL (task still alive, so CNI_NETNS is valid), then kill and delete the task
        and the container. A DEL error is raised after the container is gone."""
        c = self.containers.pop(container_id, None)
        if c is None:
            self._force_remove(container_id)
            return
        error: HarnessError | None = None
        try:
            self.cni_del(c)
        except HarnessError as exc:
            error = exc
        self._force_remove(container_id)
        if c.holder is not None:
            kill_pid(c.holder.pid, grace=1)
        if error is not None:
            raise error


def bridge_plugin(subnet: str = "198.18.128.0/24", bridge: str = "mne2e0",
                  range_start: str | None = None, range_end: str | None = None) -> dict[str, Any]:
    """A bridge + host-local plugin entry on a benchmark-range subnet, no masquerading."""
    rng: dict[str, str] = {"subnet": subnet}
    if range_start:
        rng["rangeStart"] = range_start
    if range_end:
        rng["rangeEnd"] = range_end
    return {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False,
            "hairpinMode": False,
            "ipam": {"type": "host-local", "ranges": [[rng]], "routes": [{"dst": "0.0.0.0/0"}]}}


def host_snapshot() -> dict[str, str]:
    """The host's links, addresses, routes and firewall, minus counters and timestamps."""
    def out(*argv: str) -> str:
        if not shutil.which(argv[0]):
            return ""
        return _run(argv, timeout=30).stdout

    def fw(text: str) -> str:
        lines = (re.sub(r"\[\d+:\d+\]", "", ln) for ln in text.splitlines())
        return "\n".join(ln for ln in lines if not ln.startswith("#"))

    return {
        "links": re.sub(r"\\\s+link/", " link/", out("ip", "-o", "link")),
        "addrs": re.sub(r"(valid|preferred)_lft \S+", "", out("ip", "-o", "addr")),
        "routes": out("ip", "route", "show", "table", "all"),
        "rules": out("ip", "rule"),
        "iptables": fw(out("iptables-save")),
        "ip6tables": fw(out("ip6tables-save")),
        "nft": out("nft", "list", "ruleset"),
        "netns": "\n".join(n for n in netns_names() if n.startswith(f"{PREFIX}-{os.getpid()}-")),
    }
