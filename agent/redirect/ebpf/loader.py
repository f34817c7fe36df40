"""Compile bpf/redirect.c with bcc, attach it to the root cgroup v2, pin links and maps.

Lifecycle:
* `Loader(pin_dir).load()` compiles once (~1 s), loads every program (PROGRAMS, SK_LOOKUP)
  with its expected attach type and attaches the cgroup ones to the cgroup v2 root through
  **bpf links** pinned as
  `<pin_dir>/link_<name>`. Maps are pinned by bcc itself (`BPF_TABLE_PINNED`), so a
  restarted agent gets the same maps back, with every enrolled pod still in them. If a
  pinned link already exists (agent restart) the new program replaces the old one in place
  with BPF_LINK_UPDATE: there is no moment where nothing is attached.
* Enrolling/removing a pod writes the `pods` map (keyed by the pod's netns cookie) and
  `pod_ips`, and attaches/detaches the pod's sk_lookup link.
* `destroy()` detaches the links (BPF_LINK_DETACH, so even another holder of the link fd
  cannot keep the programs attached) and removes every pin it owns.

Inbound capture uses sk_lookup, which attaches to a network namespace, not a cgroup: the
one loaded `mn_sk_lookup` program gets one more pinned link per enrolled pod
(`<pin_dir>/netns/<netns cookie>`), created at enroll and detached at removal. Attaching a
loaded program is not a reload.

bcc has no Python API for bpf links or for pinning: core/bpf.py does those.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import socket
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.redirect.spec import RedirectSpec
from core import bpf as sc
from core.addr import unmap
from core.bpf import DEFAULT_PIN_DIR, SO_NETNS_COOKIE
from core.netns import entered

SOURCE = Path(__file__).resolve().parents[3] / "bpf" / "redirect.c"

MAX_PORTS = 16  # keep in sync with MN_MAX_PORTS / MN_MAX_CIDRS in bpf/redirect.c
MAX_CIDRS = 8
BPF_FS_MAGIC = 0xCAFE4A11
CGROUP2_SUPER_MAGIC = 0x63677270

# prog types / attach types (uapi/linux/bpf.h)
_PROG_CGROUP_SOCK, _PROG_SOCK_OPS, _PROG_CGROUP_SOCK_ADDR = 9, 13, 18
_PROG_CGROUP_SOCKOPT, _PROG_SK_LOOKUP = 25, 30
_ATTACH_SOCK_OPS, _ATTACH_INET4_CONNECT, _ATTACH_INET6_CONNECT = 3, 10, 11
_ATTACH_UDP4_SENDMSG, _ATTACH_UDP6_SENDMSG = 14, 15
_ATTACH_UDP4_RECVMSG, _ATTACH_UDP6_RECVMSG, _ATTACH_GETSOCKOPT = 19, 20, 21
_ATTACH_GETPEERNAME4, _ATTACH_GETPEERNAME6 = 29, 30
_ATTACH_SOCK_RELEASE, _ATTACH_SK_LOOKUP = 34, 36


@dataclass(frozen=True)
class Program:
    name: str  # function in redirect.c
    prog_type: int
    attach_type: int
    hook: str  # for humans


# Attached to the cgroup v2 root.
PROGRAMS = (
    Program("mn_connect4", _PROG_CGROUP_SOCK_ADDR, _ATTACH_INET4_CONNECT, "cgroup/connect4"),
    Program("mn_connect6", _PROG_CGROUP_SOCK_ADDR, _ATTACH_INET6_CONNECT, "cgroup/connect6"),
    Program("mn_sendmsg4", _PROG_CGROUP_SOCK_ADDR, _ATTACH_UDP4_SENDMSG, "cgroup/sendmsg4"),
    Program("mn_sendmsg6", _PROG_CGROUP_SOCK_ADDR, _ATTACH_UDP6_SENDMSG, "cgroup/sendmsg6"),
    Program("mn_recvmsg4", _PROG_CGROUP_SOCK_ADDR, _ATTACH_UDP4_RECVMSG, "cgroup/recvmsg4"),
    Program("mn_recvmsg6", _PROG_CGROUP_SOCK_ADDR, _ATTACH_UDP6_RECVMSG, "cgroup/recvmsg6"),
    Program("mn_getpeername4", _PROG_CGROUP_SOCK_ADDR, _ATTACH_GETPEERNAME4,
            "cgroup/getpeername4"),
    Program("mn_getpeername6", _PROG_CGROUP_SOCK_ADDR, _ATTACH_GETPEERNAME6,
            "cgroup/getpeername6"),
    Program("mn_sockops", _PROG_SOCK_OPS, _ATTACH_SOCK_OPS, "sockops"),
    Program("mn_getsockopt", _PROG_CGROUP_SOCKOPT, _ATTACH_GETSOCKOPT, "cgroup/getsockopt"),
    Program("mn_sock_release", _PROG_CGROUP_SOCK, _ATTACH_SOCK_RELEASE, "cgroup/sock_release"),
)
# Attached to each enrolled pod's netns.
SK_LOOKUP = Program("mn_sk_lookup", _PROG_SK_LOOKUP, _ATTACH_SK_LOOKUP, "sk_lookup")
MAPS = ("pods", "pod_ips", "cookie_origin", "pair_origin", "transparent", "listeners", "stats")
# `stats` slots (MN_STAT_* in redirect.c)
STATS = ("outbound", "dns", "inbound", "inbound_no_listener", "original_dst")


class LoadError(Exception):
    """The eBPF programs could not be loaded or attached; the message names the cause."""


@dataclass(frozen=True)
class PodOpts:
    """One `pods` map value (struct pod_opts in redirect.c)."""

    outbound_port: int
    proxy_mark: int
    mark_mask: int
    skip_ip4: str = ""
    ports: tuple[int, ...] = ()
    cidrs: tuple[str, ...] = ()  # IPv4, normalised ("10.0.0.0/8")
    ipv6: bool = False  # redirect native IPv6 destinations too (v4-mapped ones always)
    skip_ip6: str = ""
    cidrs6: tuple[str, ...] = ()  # IPv6, normalised ("fd00::/8")
    dns_port: int = 0  # 0: DNS not captured
    inbound_port: int = 0  # 0: inbound not captured
    tunnel_port: int = 0
    in_ports: tuple[int, ...] = ()  # excluded inbound ports

    @classmethod
    def from_spec(cls, spec: RedirectSpec) -> PodOpts:
        ports = tuple(sorted(set(spec.exclude_outbound_ports)))
        cidrs = tuple(str(ipaddress.IPv4Network(c, strict=False)) for c in spec.cidrs(4))
        cidrs6 = tuple(str(ipaddress.IPv6Network(c, strict=False)) for c in spec.cidrs(6)
                       ) if spec.ipv6 else ()
        if len(ports) > MAX_PORTS:
            raise ValueError(f"exclude_outbound_ports: at most {MAX_PORTS} with ebpf")
        if len(cidrs) > MAX_CIDRS:
            raise ValueError(f"exclude_outbound_cidrs: at most {MAX_CIDRS} IPv4 with ebpf")
        if len(cidrs6) > MAX_CIDRS:
            raise ValueError(f"exclude_outbound_cidrs: at most {MAX_CIDRS} IPv6 with ebpf")
        in_ports = tuple(sorted(set(spec.exclude_inbound_ports))
                         ) if spec.inbound_capture else ()
        if len(in_ports) > MAX_PORTS:
            raise ValueError(f"exclude_inbound_ports: at most {MAX_PORTS} with ebpf")
        return cls(spec.outbound_port, spec.proxy_mark, spec.mark_mask,
                   spec.probe_source_v4, ports, cidrs, spec.ipv6,
                   str(ipaddress.IPv6Address(spec.probe_source_v6)) if spec.ipv6 else "",
                   cidrs6,
                   dns_port=spec.dns_port if spec.dns_capture else 0,
                   inbound_port=spec.inbound_port if spec.inbound_capture else 0,
                   tunnel_port=spec.tunnel_port, in_ports=in_ports)

    def describe(self) -> str:
        text = (f"outbound_port={self.outbound_port} proxy_mark={self.proxy_mark:#x}"
                f"/{self.mark_mask:#x} skip={self.skip_ip4 or '-'}"
                f" exclude_ports={','.join(map(str, self.ports)) or '-'}"
                f" exclude_cidrs={','.join(self.cidrs) or '-'}")
        if self.ipv6:
            text += (f" ipv6=on skip6={self.skip_ip6 or '-'}"
                     f" exclude_cidrs6={','.join(self.cidrs6) or '-'}")
        text += f" dns_port={self.dns_port or 'off'}"
        if self.inbound_port:
            text += (f" inbound_port={self.inbound_port} tunnel_port={self.tunnel_port}"
                     f" exclude_inbound_ports={','.join(map(str, self.in_ports)) or '-'}")
        else:
            text += " inbound=off"
        return text


def _ip_be(ip: str) -> int:
    """An IPv4 address as the u32 the kernel keeps (network order) read natively."""
    return int(struct.unpack("=I", socket.inet_aton(ip))[0])


def _ip_str(v: int) -> str:
    return socket.inet_ntoa(struct.pack("=I", v))


def _ip6_words(ip: str) -> tuple[int, int, int, int]:
    """An IPv6 address as the four u32 words the kernel keeps (network order) read natively."""
    a, b, c, d = struct.unpack("=4I", socket.inet_pton(socket.AF_INET6, ip))
    return int(a), int(b), int(c), int(d)


def _ip6_str(words: Any) -> str:
    return socket.inet_ntop(socket.AF_INET6, struct.pack("=4I", *(int(w) for w in words)))


_libc = ctypes.CDLL(None, use_errno=True)


# --- environment checks -------------------------------------------------------------------

def _fs_type(path: str) -> int:
    class Statfs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 112)]

    st = Statfs()
    if _libc.statfs(path.encode(), ctypes.byref(st)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"statfs {path}: {os.strerror(err)}")
    return int(st.f_type) & 0xFFFFFFFF


def find_cgroup2() -> str:
    """The cgroup v2 root: /sys/fs/cgroup on a unified host, …/unified on a hybrid one."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] == "cgroup2" and left.split()[3] == "/":
                return left.split()[4].replace("\\040", " ")
    raise LoadError("no cgroup v2 mount found (the eBPF backend needs cgroup v2; "
                    "mount -t cgroup2 none /sys/fs/cgroup/unified)")


CGROUP_ENV = "MESHNODE_BPF_CGROUP"


def default_cgroup() -> str:
    """$MESHNODE_BPF_CGROUP: the host's cgroup v2 root as mounted in a container (the
    DaemonSet sets it); "" = find it from mountinfo, which inside a container is the
    container's own cgroup. Read by whoever makes a backend (agent config, CLI)."""
    return os.environ.get(CGROUP_ENV, "")


def netns_cookie(netns: str | None = None) -> int:
    """The netns cookie of `netns` (a path), or of this thread's netns."""
    ctx = entered(netns) if netns else contextlib.nullcontext()
    with ctx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        raw = s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    return int(struct.unpack("=Q", raw)[0])


def _check_environment(pin_dir: str) -> None:
    parent = str(Path(pin_dir).parent)
    try:
        magic = _fs_type(parent)
    except OSError as exc:
        raise LoadError(f"bpffs: {exc.strerror}") from None
    if magic != BPF_FS_MAGIC:
        raise LoadError(f"bpffs is not mounted at {parent} (mount -t bpf bpf {parent})")
    if not os.path.exists(f"/lib/modules/{os.uname().release}/build"):
        raise LoadError(f"kernel headers missing: /lib/modules/{os.uname().release}/build "
                        "(bcc compiles against them)")


def addr_key(ip: str) -> bytes:
    """A `struct addr_key`: 16 bytes, IPv4 v4-mapped."""
    a = ipaddress.ip_address(ip)
    if a.version == 4:
        return b"\0" * 10 + b"\xff\xff" + a.packed
    return a.packed


@dataclass
class Loader:
    pin_dir: str = DEFAULT_PIN_DIR
    cgroup: str = ""  # default: the cgroup v2 root
    source: Path = SOURCE
    _bpf_obj: Any = field(default=None, repr=False)
    _links: dict[str, int] = field(default_factory=dict, repr=False)
    _sk_lookup_fd: int = field(default=-1, repr=False)
    # The `pod_ips` keys of each pod (by netns cookie): read from the pinned map once per
    # load (agent start or takeover: the map outlives the agent), then kept as this loader
    # writes it, so enrolling or removing a pod touches only its own entries instead of
    # scanning the map. Worker threads enroll pods in parallel: `_addrs_lock`.
    _pod_keys: dict[int, frozenset[bytes]] = field(default_factory=dict, repr=False)
    _addrs_lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def netns_dir(self) -> str:
        return os.path.join(self.pin_dir, "netns")

    # -- load / unload ------------------------------------------------------------------

    def load(self) -> None:
        """Compile, load, attach (or re-attach) and pin. Idempotent per process; loads again
        if the pins went away (someone destroyed them: our fds point at detached objects)."""
        if self._bpf_obj is not None:
            if os.path.exists(os.path.join(self.pin_dir, f"link_{PROGRAMS[0].name}")):
                return
            self.close()
        _check_environment(self.pin_dir)
        self.cgroup = self.cgroup or find_cgroup2()
        if _fs_type(self.cgroup) != CGROUP2_SUPER_MAGIC:
            raise LoadError(f"{self.cgroup} is not a cgroup v2 mount")
        try:
            from bcc import BPF  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise LoadError(f"bcc python module missing (apt install python3-bpfcc): {exc}"
                            ) from None
        os.makedirs(self.netns_dir, exist_ok=True)
        text = self.source.read_text().replace("@PIN@", self.pin_dir)
        try:
            b = BPF(text=text.encode())
        except Exception as exc:  # bcc raises bare Exception
            raise LoadError(f"bcc could not compile {self.source.name} (pinned maps of "
                            f"another layout in {self.pin_dir}? headers?): {exc}") from None
        try:
            fns = {}
            for p in (*PROGRAMS, SK_LOOKUP):
                try:
                    fns[p.name] = b.load_func(p.name.encode(), p.prog_type,
                                              attach_type=p.attach_type)
                except Exception as exc:
                    raise LoadError(f"verifier rejected {p.name} ({p.hook}): {exc}; "
                                    "the verifier log is on stderr") from None
            cg = os.open(self.cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                for p in PROGRAMS:
                    self._links[p.name] = self._attach(p, fns[p.name].fd, cg)
            finally:
                os.close(cg)
            self._sk_lookup_fd = fns[SK_LOOKUP.name].fd
            dead = self._adopt_netns_links()
        except BaseException:
            for fd in self._links.values():
                os.close(fd)
            self._links.clear()
            self._sk_lookup_fd = -1
            b.cleanup()
            raise
        self._bpf_obj = b
        self._index_addrs()
        for cookie in dead:
            # Pods deleted while no agent ran (no CNI DEL reached us): forget them.
            self.unenroll_cookie(cookie)

    def prune(self) -> list[int]:
        """Forget every pod whose netns is gone (its sk_lookup link was detached by the
        kernel); the agent calls this when it reconciles. Returns their netns cookies."""
        self.load()
        dead = self._adopt_netns_links()
        for cookie in dead:
            self.unenroll_cookie(cookie)
        return dead

    def _attach(self, p: Program, prog_fd: int, cgroup_fd: int) -> int:
        pin = os.path.join(self.pin_dir, f"link_{p.name}")
        if os.path.exists(pin):
            fd = sc.obj_get(pin)
            try:
                sc.link_update(fd, prog_fd)
            except OSError as exc:
                os.close(fd)
                raise LoadError(f"cannot replace the program of pinned link {pin}: "
                                f"{exc.strerror}") from None
            return fd
        try:
            fd = sc.link_create(prog_fd, cgroup_fd, p.attach_type)
        except OSError as exc:
            raise LoadError(f"attach {p.hook} to {self.cgroup}: {exc.strerror}") from None
        try:
            sc.obj_pin(fd, pin)
        except OSError as exc:
            os.close(fd)  # the link dies with its last fd: nothing stays attached
            raise LoadError(f"pin {pin}: {exc.strerror}") from None
        return fd

    def _adopt_netns_links(self) -> list[int]:
        """Agent restart: point every pod's sk_lookup link at the program just loaded.
        Returns the netns cookies whose link the kernel detached (the netns is gone)."""
        dead: list[int] = []
        for name in os.listdir(self.netns_dir):
            pin = os.path.join(self.netns_dir, name)
            fd = sc.obj_get(pin)
            try:
                if sc.link_info(fd).get("netns_ino", 0) == 0:
                    dead.append(int(name))
                    continue
                sc.link_update(fd, self._sk_lookup_fd)
            except OSError as exc:
                raise LoadError(f"cannot replace the program of pinned link {pin}: "
                                f"{exc.strerror}") from None
            finally:
                os.close(fd)
        return dead

    def close(self) -> None:
        """Drop this process's fds; pinned links and maps stay (the agent restarting)."""
        for fd in self._links.values():
            os.close(fd)
        self._links.clear()
        self._sk_lookup_fd = -1
        if self._bpf_obj is not None:
            self._bpf_obj.cleanup()
            self._bpf_obj = None
        with self._addrs_lock:
            self._pod_keys.clear()

    def destroy(self) -> None:
        """Detach everything and remove every pin under pin_dir that we own."""
        pins = [os.path.join(self.pin_dir, f"link_{p.name}") for p in PROGRAMS]
        if os.path.isdir(self.netns_dir):
            pins += [os.path.join(self.netns_dir, n) for n in os.listdir(self.netns_dir)]
        for pin in pins:
            if not os.path.exists(pin):
                continue
            fd = sc.obj_get(pin)
            try:
                with contextlib.suppress(OSError):  # a netns link whose netns is gone
                    sc.link_detach(fd)
            finally:
                os.close(fd)
            os.unlink(pin)
        self.close()
        for name in MAPS:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.pin_dir, name))
        for d in (self.netns_dir, self.pin_dir):
            with contextlib.suppress(FileNotFoundError, OSError):
                os.rmdir(d)

    # -- per-pod state -------------------------------------------------------------------

    def _table(self, name: str) -> Any:
        if self._bpf_obj is None:
            self.load()
        return self._bpf_obj[name.encode()]

    def enroll_cookie(self, cookie: int, opts: PodOpts, addrs: tuple[str, ...] = (),
                      netns_fd: int = -1) -> None:
        """Capture the pod whose netns has this cookie. `addrs` are the pod's own addresses
        (inbound is found by them; outbound to them is left alone); `netns_fd` is needed for
        inbound capture (the sk_lookup link). On failure nothing of it stays."""
        self._set_addrs(cookie, addrs)
        try:
            t = self._table("pods")
            leaf = self._leaf(opts)
            with contextlib.suppress(KeyError):
                leaf.redirected = t[t.Key(cookie)].redirected  # re-apply keeps the count
            t[t.Key(cookie)] = leaf
            if opts.inbound_port:
                if netns_fd < 0:
                    raise LoadError("inbound capture needs the pod's netns")
                self._link_netns(cookie, netns_fd)
            else:
                self._unlink_netns(cookie)
        except BaseException:
            self.unenroll_cookie(cookie)
            raise

    def _leaf(self, opts: PodOpts) -> Any:
        v = self._table("pods").Leaf()
        v.proxy_mark, v.mark_mask = opts.proxy_mark, opts.mark_mask
        v.skip_ip4 = _ip_be(opts.skip_ip4) if opts.skip_ip4 else 0
        v.outbound_port = opts.outbound_port
        v.n_ports, v.n_cidrs = len(opts.ports), len(opts.cidrs)
        for i, port in enumerate(opts.ports):
            v.ports[i] = port
        for i, c in enumerate(opts.cidrs):
            net = ipaddress.IPv4Network(c)
            v.cidr_addr[i] = _ip_be(str(net.network_address))
            v.cidr_mask[i] = _ip_be(str(net.netmask))
        v.ipv6 = int(opts.ipv6)
        for j, w in enumerate(_ip6_words(opts.skip_ip6 or "::")):
            v.skip_ip6[j] = w
        v.n_cidrs6 = len(opts.cidrs6)
        for i, c in enumerate(opts.cidrs6):
            net6 = ipaddress.IPv6Network(c)
            addr = _ip6_words(str(net6.network_address))
            mask = _ip6_words(str(net6.netmask))
            for j in range(4):
                v.cidr6_addr[4 * i + j] = addr[j]
                v.cidr6_mask[4 * i + j] = mask[j]
        v.dns_port, v.inbound_port, v.tunnel_port = (opts.dns_port, opts.inbound_port,
                                                     opts.tunnel_port)
        v.n_in_ports = len(opts.in_ports)
        for i, port in enumerate(opts.in_ports):
            v.in_ports[i] = port
        return v

    def _scan_addrs(self) -> dict[int, set[bytes]]:
        """Every pod's keys in the pinned `pod_ips` map: a full scan, O(entries)."""
        found: dict[int, set[bytes]] = {}
        for k, v in self._table("pod_ips").items():
            found.setdefault(int(v.value), set()).add(bytes(k))
        return found

    def _index_addrs(self) -> None:
        with self._addrs_lock:
            keys = self._scan_addrs()
            # enrolled pods without an address are known too (their removal needs no scan)
            self._pod_keys = {int(k.value): frozenset(keys.pop(int(k.value), ()))
                              for k in self._table("pods")}
            # and entries of no enrolled pod (an enroll cut short), to be removed with it
            self._pod_keys.update((c, frozenset(ks)) for c, ks in keys.items())

    def _set_addrs(self, cookie: int, addrs: tuple[str, ...] | None) -> None:
        """Make the pod's `pod_ips` entries exactly `addrs` (None: remove the pod), touching
        only its own keys."""
        t = self._table("pod_ips")
        want = frozenset(addr_key(a) for a in addrs or ())
        with self._addrs_lock:
            old = self._pod_keys.get(cookie)
            if old is None:
                # A pod this loader does not know. Netns cookies are never reused, so a new
                # pod has no entries; removing one (a DEL for a pod enrolled by another
                # process since our load, or never enrolled) scans, to delete exactly its
                # entries whoever wrote them.
                old = frozenset(self._scan_addrs().get(cookie, ())) if addrs is None \
                    else frozenset()
            for raw in old - want:
                k = t.Key.from_buffer_copy(raw)
                with contextlib.suppress(KeyError):
                    # the address may belong to another pod by now (re-used IP): not ours
                    if int(t[k].value) == cookie:
                        del t[k]
            for raw in want:
                t[t.Key.from_buffer_copy(raw)] = t.Leaf(cookie)
            # a key another pod took over stays in its old owner's set until that pod is
            # re-applied or removed: harmless, the owner check above skips it
            if addrs is None:
                self._pod_keys.pop(cookie, None)
            else:
                self._pod_keys[cookie] = want

    def _link_netns(self, cookie: int, netns_fd: int) -> None:
        pin = os.path.join(self.netns_dir, str(cookie))
        if os.path.exists(pin):
            return  # re-apply: already attached
        fd = sc.link_create(self._sk_lookup_fd, netns_fd, SK_LOOKUP.attach_type)
        try:
            sc.obj_pin(fd, pin)
        finally:
            os.close(fd)  # the pin keeps the link

    def _unlink_netns(self, cookie: int) -> bool:
        pin = os.path.join(self.netns_dir, str(cookie))
        if not os.path.exists(pin):
            return False
        fd = sc.obj_get(pin)
        try:
            with contextlib.suppress(OSError):  # netns already gone: nothing attached
                sc.link_detach(fd)
        finally:
            os.close(fd)
        os.unlink(pin)
        return True

    def unenroll_cookie(self, cookie: int) -> bool:
        """Inbound first, then outbound, then the addresses: every step on its own leaves
        the pod either captured or not, never captured without its options."""
        self._table("pods")  # loaded
        found = self._unlink_netns(cookie)
        t = self._table("pods")
        try:
            del t[t.Key(cookie)]
            found = True
        except KeyError:
            pass
        self._set_addrs(cookie, None)
        return found

    def read_cookie(self, cookie: int) -> PodOpts | None:
        t = self._table("pods")
        try:
            v = t[t.Key(cookie)]
        except KeyError:
            return None
        return PodOpts(
            outbound_port=int(v.outbound_port), proxy_mark=int(v.proxy_mark),
            mark_mask=int(v.mark_mask), skip_ip4=_ip_str(v.skip_ip4) if v.skip_ip4 else "",
            ports=tuple(int(v.ports[i]) for i in range(min(v.n_ports, MAX_PORTS))),
            cidrs=tuple(str(ipaddress.IPv4Network(
                f"{_ip_str(v.cidr_addr[i])}/{_ip_str(v.cidr_mask[i])}"))
                for i in range(min(v.n_cidrs, MAX_CIDRS))),
            ipv6=bool(v.ipv6),
            skip_ip6=_ip6_str(v.skip_ip6) if any(v.skip_ip6) else "",
            cidrs6=tuple(str(ipaddress.IPv6Network(
                f"{_ip6_str(v.cidr6_addr[4 * i:4 * i + 4])}/"
                f"{sum(bin(int(w)).count('1') for w in v.cidr6_mask[4 * i:4 * i + 4])}"))
                for i in range(min(v.n_cidrs6, MAX_CIDRS))),
            dns_port=int(v.dns_port), inbound_port=int(v.inbound_port),
            tunnel_port=int(v.tunnel_port),
            in_ports=tuple(int(v.in_ports[i]) for i in range(min(v.n_in_ports, MAX_PORTS))))

    def redirected(self, cookie: int) -> int:
        """How many connections and DNS datagrams this pod has had redirected."""
        t = self._table("pods")
        try:
            return int(t[t.Key(cookie)].redirected)
        except KeyError:
            return 0

    def addrs_of(self, cookie: int) -> list[str]:
        out = []
        for k, v in self._table("pod_ips").items():
            if int(v.value) == cookie:
                a = ipaddress.IPv6Address(bytes(k))
                out.append(str(unmap(a)))
        return sorted(out)

    def netns_linked(self, cookie: int) -> bool:
        return os.path.exists(os.path.join(self.netns_dir, str(cookie)))

    def enroll(self, netns_path: str, spec: RedirectSpec, addrs: tuple[str, ...] = ()) -> int:
        """Redirect the pod in `netns_path` as `spec` says; returns its netns cookie."""
        cookie = netns_cookie(netns_path)
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.enroll_cookie(cookie, PodOpts.from_spec(spec), addrs, fd)
        finally:
            os.close(fd)
        return cookie

    def unenroll(self, netns_path: str) -> bool:
        return self.unenroll_cookie(netns_cookie(netns_path))

    # -- status --------------------------------------------------------------------------

    def _pinned_fd(self, name: str) -> int:
        return sc.obj_get(os.path.join(self.pin_dir, name))

    def listener_cookies(self) -> list[int]:
        """The netns cookies the proxy has registered an inbound listener for."""
        fd = self._pinned_fd("listeners")
        try:
            return sorted(int.from_bytes(k, "little") for k in sc.map_keys(fd, 8))
        finally:
            os.close(fd)

    def map_counts(self) -> dict[str, int]:
        counts = {name: sum(1 for _ in self._table(name)) for name in MAPS
                  if name not in ("stats", "listeners")}
        counts["listeners"] = len(self.listener_cookies())
        return counts

    def stats(self) -> dict[str, int]:
        t = self._table("stats")
        return {name: int(sum(t[t.Key(i)])) for i, name in enumerate(STATS)}

    def status(self) -> dict[str, Any]:
        """What the kernel says is attached (link/prog ids) and how full the maps are."""
        progs = []
        for p in PROGRAMS:
            pin = os.path.join(self.pin_dir, f"link_{p.name}")
            entry: dict[str, Any] = {"name": p.name, "hook": p.hook, "cgroup": self.cgroup,
                                     "pin": pin, "attached": False}
            if os.path.exists(pin):
                fd = sc.obj_get(pin)
                try:
                    entry.update(sc.link_info(fd))
                finally:
                    os.close(fd)
                entry["attached"] = entry["cgroup_id"] != 0
            progs.append(entry)
        netns_links = []
        for name in sorted(os.listdir(self.netns_dir)) if os.path.isdir(self.netns_dir) else []:
            fd = sc.obj_get(os.path.join(self.netns_dir, name))
            try:
                info = sc.link_info(fd)
            finally:
                os.close(fd)
            netns_links.append({"netns_cookie": int(name), **info,
                                "attached": info.get("netns_ino", 0) != 0})
        progs.append({"name": SK_LOOKUP.name, "hook": SK_LOOKUP.hook,
                      "cgroup": "-", "pin": self.netns_dir,
                      "attached": any(n["attached"] for n in netns_links),
                      "netns_links": len(netns_links)})
        maps = []
        counts = self.map_counts()
        for name in MAPS:
            fd = self._pinned_fd(name)
            try:
                mid = sc.map_id(fd)
                max_entries = int.from_bytes(sc.info(fd)[16:20], "little")
            finally:
                os.close(fd)
            maps.append({"name": name, "id": mid, "entries": counts.get(name, len(STATS)),
                         "max_entries": max_entries, "pin": os.path.join(self.pin_dir, name)})
        return {"pin_dir": self.pin_dir, "programs": progs, "netns_links": netns_links,
                "maps": maps, "stats": self.stats()}
