"""Compile bpf/redirect.c with bcc, attach it to the root cgroup v2, pin links and maps.

Lifecycle:
* `Loader(pin_dir).load()` compiles once (~1 s), loads three programs with their expected
  attach types and attaches them to the cgroup v2 root through **bpf links** pinned as
  `<pin_dir>/link_<name>`. Maps are pinned by bcc itself (`BPF_TABLE_PINNED`), so a
  restarted agent gets the same maps back, with every enrolled pod still in them. If a
  pinned link already exists (agent restart) the new program replaces the old one in place
  with BPF_LINK_UPDATE: there is no moment where nothing is attached.
* Enrolling/removing a pod only writes the `pods` map, keyed by the pod's netns cookie.
* `destroy()` detaches the links (BPF_LINK_DETACH, so even another holder of the link fd
  cannot keep the programs attached) and removes every pin it owns.

bcc has no Python API for bpf links or for pinning, so those few commands go straight to
bpf(2) through ctypes.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.redirect.netns import entered
from agent.redirect.spec import RedirectSpec

DEFAULT_PIN_DIR = "/sys/fs/bpf/meshnode"
SOURCE = Path(__file__).resolve().parents[2] / "bpf" / "redirect.c"

MAX_PORTS = 16  # keep in sync with MN_MAX_PORTS / MN_MAX_CIDRS in bpf/redirect.c
MAX_CIDRS = 8
SO_NETNS_COOKIE = 71
BPF_FS_MAGIC = 0xCAFE4A11
CGROUP2_SUPER_MAGIC = 0x63677270

# bpf(2)
_NR_BPF = 321  # x86_64
_BPF_OBJ_PIN, _BPF_OBJ_GET, _BPF_OBJ_GET_INFO_BY_FD = 6, 7, 15
_BPF_LINK_CREATE, _BPF_LINK_UPDATE, _BPF_LINK_DETACH = 28, 29, 34
# prog types / attach types (uapi/linux/bpf.h)
_PROG_SOCK_OPS, _PROG_CGROUP_SOCK_ADDR, _PROG_CGROUP_SOCKOPT = 13, 18, 25
_ATTACH_SOCK_OPS, _ATTACH_INET4_CONNECT, _ATTACH_INET6_CONNECT = 3, 10, 11
_ATTACH_GETSOCKOPT = 21


@dataclass(frozen=True)
class Program:
    name: str  # function in redirect.c
    prog_type: int
    attach_type: int
    hook: str  # for humans


PROGRAMS = (
    Program("mn_connect4", _PROG_CGROUP_SOCK_ADDR, _ATTACH_INET4_CONNECT, "cgroup/connect4"),
    Program("mn_connect6", _PROG_CGROUP_SOCK_ADDR, _ATTACH_INET6_CONNECT, "cgroup/connect6"),
    Program("mn_sockops", _PROG_SOCK_OPS, _ATTACH_SOCK_OPS, "sockops"),
    Program("mn_getsockopt", _PROG_CGROUP_SOCKOPT, _ATTACH_GETSOCKOPT, "cgroup/getsockopt"),
)
MAPS = ("pods", "cookie_origin", "pair_origin")


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
        return cls(spec.outbound_port, spec.proxy_mark, spec.mark_mask,
                   spec.probe_source_v4, ports, cidrs, spec.ipv6,
                   str(ipaddress.IPv6Address(spec.probe_source_v6)) if spec.ipv6 else "",
                   cidrs6)

    def describe(self) -> str:
        text = (f"outbound_port={self.outbound_port} proxy_mark={self.proxy_mark:#x}"
                f"/{self.mark_mask:#x} skip={self.skip_ip4 or '-'}"
                f" exclude_ports={','.join(map(str, self.ports)) or '-'}"
                f" exclude_cidrs={','.join(self.cidrs) or '-'}")
        if self.ipv6:
            text += (f" ipv6=on skip6={self.skip_ip6 or '-'}"
                     f" exclude_cidrs6={','.join(self.cidrs6) or '-'}")
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


# --- bpf(2) -----------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char], what: str) -> int:
    ret = int(_libc.syscall(_NR_BPF, cmd, attr, ctypes.sizeof(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _attr(*fields: tuple[str, int]) -> ctypes.Array[ctypes.c_char]:
    fmt = "=" + "".join(f for f, _ in fields)
    raw = struct.pack(fmt, *(v for _, v in fields))
    return ctypes.create_string_buffer(raw, 128)


def _obj_pin(fd: int, path: str) -> None:
    p = ctypes.create_string_buffer(path.encode())
    _bpf(_BPF_OBJ_PIN, _attr(("Q", ctypes.addressof(p)), ("I", fd)), f"pin {path}")


def _obj_get(path: str) -> int:
    p = ctypes.create_string_buffer(path.encode())
    return _bpf(_BPF_OBJ_GET, _attr(("Q", ctypes.addressof(p))), f"open pinned {path}")


def _link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    return _bpf(_BPF_LINK_CREATE, _attr(("I", prog_fd), ("I", target_fd), ("I", attach_type),
                                        ("I", 0)), "link create")


def _link_update(link_fd: int, prog_fd: int) -> None:
    _bpf(_BPF_LINK_UPDATE, _attr(("I", link_fd), ("I", prog_fd), ("I", 0)), "link update")


def _link_detach(link_fd: int) -> None:
    _bpf(_BPF_LINK_DETACH, _attr(("I", link_fd)), "link detach")


def _info(fd: int, size: int = 128) -> bytes:
    buf = ctypes.create_string_buffer(size)
    _bpf(_BPF_OBJ_GET_INFO_BY_FD, _attr(("I", fd), ("I", size), ("Q", ctypes.addressof(buf))),
         "get info")
    return buf.raw


def link_info(fd: int) -> dict[str, int]:
    """struct bpf_link_info: type, id, prog_id, then cgroup {cgroup_id, attach_type}."""
    raw = _info(fd)
    ltype, lid, prog_id = struct.unpack_from("=III", raw, 0)
    cgroup_id, attach_type = struct.unpack_from("=QI", raw, 16)
    return {"link_id": lid, "link_type": ltype, "prog_id": prog_id,
            "cgroup_id": cgroup_id, "attach_type": attach_type}


def map_id(fd: int) -> int:
    return int(struct.unpack_from("=II", _info(fd), 0)[1])


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


@dataclass
class Loader:
    pin_dir: str = DEFAULT_PIN_DIR
    cgroup: str = ""  # default: the cgroup v2 root
    source: Path = SOURCE
    _bpf_obj: Any = field(default=None, repr=False)
    _links: dict[str, int] = field(default_factory=dict, repr=False)

    # -- load / unload ------------------------------------------------------------------

    def load(self) -> None:
        """Compile, load, attach (or re-attach) and pin. Idempotent per process."""
        if self._bpf_obj is not None:
            return
        _check_environment(self.pin_dir)
        self.cgroup = self.cgroup or find_cgroup2()
        if _fs_type(self.cgroup) != CGROUP2_SUPER_MAGIC:
            raise LoadError(f"{self.cgroup} is not a cgroup v2 mount")
        try:
            from bcc import BPF  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise LoadError(f"bcc python module missing (apt install python3-bpfcc): {exc}"
                            ) from None
        os.makedirs(self.pin_dir, exist_ok=True)
        text = self.source.read_text().replace("@PIN@", self.pin_dir)
        try:
            b = BPF(text=text.encode())
        except Exception as exc:  # bcc raises bare Exception
            raise LoadError(f"bcc could not compile {self.source.name} (pinned maps of "
                            f"another layout in {self.pin_dir}? headers?): {exc}") from None
        try:
            fns = {}
            for p in PROGRAMS:
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
        except BaseException:
            for fd in self._links.values():
                os.close(fd)
            self._links.clear()
            b.cleanup()
            raise
        self._bpf_obj = b

    def _attach(self, p: Program, prog_fd: int, cgroup_fd: int) -> int:
        pin = os.path.join(self.pin_dir, f"link_{p.name}")
        if os.path.exists(pin):
            fd = _obj_get(pin)
            try:
                _link_update(fd, prog_fd)
            except OSError as exc:
                os.close(fd)
                raise LoadError(f"cannot replace the program of pinned link {pin}: "
                                f"{exc.strerror}") from None
            return fd
        try:
            fd = _link_create(prog_fd, cgroup_fd, p.attach_type)
        except OSError as exc:
            raise LoadError(f"attach {p.hook} to {self.cgroup}: {exc.strerror}") from None
        try:
            _obj_pin(fd, pin)
        except OSError as exc:
            os.close(fd)  # the link dies with its last fd: nothing stays attached
            raise LoadError(f"pin {pin}: {exc.strerror}") from None
        return fd

    def close(self) -> None:
        """Drop this process's fds; pinned links and maps stay (the agent restarting)."""
        for fd in self._links.values():
            os.close(fd)
        self._links.clear()
        if self._bpf_obj is not None:
            self._bpf_obj.cleanup()
            self._bpf_obj = None

    def destroy(self) -> None:
        """Detach everything and remove every pin under pin_dir that we own."""
        pins = [os.path.join(self.pin_dir, f"link_{p.name}") for p in PROGRAMS]
        for pin in pins:
            if not os.path.exists(pin):
                continue
            fd = _obj_get(pin)
            try:
                _link_detach(fd)
            finally:
                os.close(fd)
            os.unlink(pin)
        self.close()
        for name in MAPS:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.pin_dir, name))
        with contextlib.suppress(FileNotFoundError, OSError):
            os.rmdir(self.pin_dir)

    # -- pods map ------------------------------------------------------------------------

    def _table(self, name: str) -> Any:
        if self._bpf_obj is None:
            self.load()
        return self._bpf_obj[name.encode()]

    def enroll_cookie(self, cookie: int, opts: PodOpts) -> None:
        t = self._table("pods")
        v = t.Leaf()
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
        t[t.Key(cookie)] = v

    def unenroll_cookie(self, cookie: int) -> bool:
        t = self._table("pods")
        try:
            del t[t.Key(cookie)]
        except KeyError:
            return False
        return True

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
                for i in range(min(v.n_cidrs6, MAX_CIDRS))))

    def enroll(self, netns_path: str, spec: RedirectSpec) -> int:
        """Redirect the pod in `netns_path` as `spec` says; returns its netns cookie."""
        cookie = netns_cookie(netns_path)
        self.enroll_cookie(cookie, PodOpts.from_spec(spec))
        return cookie

    def unenroll(self, netns_path: str) -> bool:
        return self.unenroll_cookie(netns_cookie(netns_path))

    # -- status --------------------------------------------------------------------------

    def map_counts(self) -> dict[str, int]:
        return {name: sum(1 for _ in self._table(name)) for name in MAPS}

    def status(self) -> dict[str, Any]:
        """What the kernel says is attached (link/prog ids) and how full the maps are."""
        progs = []
        for p in PROGRAMS:
            pin = os.path.join(self.pin_dir, f"link_{p.name}")
            entry: dict[str, Any] = {"name": p.name, "hook": p.hook, "cgroup": self.cgroup,
                                     "pin": pin, "attached": False}
            if os.path.exists(pin):
                fd = _obj_get(pin)
                try:
                    entry.update(link_info(fd))
                finally:
                    os.close(fd)
                entry["attached"] = entry["cgroup_id"] != 0
            progs.append(entry)
        maps = []
        counts = self.map_counts()
        for name in MAPS:
            t = self._table(name)
            maps.append({"name": name, "id": map_id(t.map_fd), "entries": counts[name],
                         "max_entries": int(t.max_entries),
                         "pin": os.path.join(self.pin_dir, name)})
        return {"pin_dir": self.pin_dir, "programs": progs, "maps": maps}
