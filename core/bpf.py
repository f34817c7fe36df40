"""The few bpf(2) commands bcc has no Python API for: pinning, links, raw map access.

No bcc import here: the proxy uses this module too (it registers its inbound listeners in a
pinned sockhash and reads DNS origins), and it must not pay for bcc or clang. The pin dir
and SO_NETNS_COOKIE, which the agent's loader and the proxy both need, are defined here.
"""

from __future__ import annotations

import ctypes
import os
import struct

from core import syscalls

_MAP_LOOKUP_ELEM, _MAP_UPDATE_ELEM, _MAP_DELETE_ELEM, _MAP_GET_NEXT_KEY = 1, 2, 3, 4
_OBJ_PIN, _OBJ_GET, _OBJ_GET_INFO_BY_FD = 6, 7, 15
_LINK_CREATE, _LINK_UPDATE, _LINK_DETACH = 28, 29, 34
BPF_ANY = 0

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def bpf(cmd: int, attr: ctypes.Array[ctypes.c_char], what: str) -> int:
    """bpf(2); the syscall number is this process's ABI's (core/syscalls.py): on an ABI
    without one, syscalls.UnsupportedArchitecture (an OSError) names it, before any call."""
    nr = syscalls.number("bpf")
    ret = int(_libc.syscall(nr, cmd, attr, ctypes.sizeof(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def attr(*fields: tuple[str, int]) -> ctypes.Array[ctypes.c_char]:
    """A `union bpf_attr` from (struct format, value) pairs, zero-padded."""
    fmt = "=" + "".join(f for f, _ in fields)
    raw = struct.pack(fmt, *(v for _, v in fields))
    return ctypes.create_string_buffer(raw, 128)


def obj_pin(fd: int, path: str) -> None:
    p = ctypes.create_string_buffer(path.encode())
    bpf(_OBJ_PIN, attr(("Q", ctypes.addressof(p)), ("I", fd)), f"pin {path}")


def obj_get(path: str) -> int:
    p = ctypes.create_string_buffer(path.encode())
    return bpf(_OBJ_GET, attr(("Q", ctypes.addressof(p))), f"open pinned {path}")


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    return bpf(_LINK_CREATE, attr(("I", prog_fd), ("I", target_fd), ("I", attach_type),
                                  ("I", 0)), "link create")


def link_update(link_fd: int, prog_fd: int) -> None:
    bpf(_LINK_UPDATE, attr(("I", link_fd), ("I", prog_fd), ("I", 0)), "link update")


def link_detach(link_fd: int) -> None:
    bpf(_LINK_DETACH, attr(("I", link_fd)), "link detach")


def info(fd: int, size: int = 128) -> bytes:
    buf = ctypes.create_string_buffer(size)
    bpf(_OBJ_GET_INFO_BY_FD, attr(("I", fd), ("I", size), ("Q", ctypes.addressof(buf))),
        "get info")
    return buf.raw


def link_info(fd: int) -> dict[str, int]:
    """struct bpf_link_info: type, id, prog_id, then the attach target: a cgroup
    {u64 cgroup_id, u32 attach_type} or a netns {u32 netns_ino, u32 attach_type}."""
    raw = info(fd)
    ltype, lid, prog_id = struct.unpack_from("=III", raw, 0)
    out = {"link_id": lid, "link_type": ltype, "prog_id": prog_id}
    if ltype == LINK_TYPE_NETNS:
        out["netns_ino"], out["attach_type"] = struct.unpack_from("=II", raw, 16)
    else:
        out["cgroup_id"], out["attach_type"] = struct.unpack_from("=QI", raw, 16)
    return out


LINK_TYPE_NETNS = 5  # BPF_LINK_TYPE_NETNS


def map_id(fd: int) -> int:
    return int(struct.unpack_from("=II", info(fd), 0)[1])


def map_lookup(map_fd: int, key: bytes, value_size: int) -> bytes | None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    try:
        bpf(_MAP_LOOKUP_ELEM, attr(("I", map_fd), ("I", 0), ("Q", ctypes.addressof(k)),
                                   ("Q", ctypes.addressof(v))), "map lookup")
    except FileNotFoundError:
        return None
    return v.raw


def map_update(map_fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    bpf(_MAP_UPDATE_ELEM, attr(("I", map_fd), ("I", 0), ("Q", ctypes.addressof(k)),
                               ("Q", ctypes.addressof(v)), ("Q", flags)), "map update")


def map_delete(map_fd: int, key: bytes) -> bool:
    k = ctypes.create_string_buffer(key, len(key))
    try:
        bpf(_MAP_DELETE_ELEM, attr(("I", map_fd), ("I", 0), ("Q", ctypes.addressof(k))),
            "map delete")
    except FileNotFoundError:
        return False
    return True


def map_keys(map_fd: int, key_size: int) -> list[bytes]:
    """Every key of a map, for the map types bcc's Python tables do not know (sockhash)."""
    keys: list[bytes] = []
    nxt = ctypes.create_string_buffer(key_size)
    prev: ctypes.Array[ctypes.c_char] | None = None
    while True:
        try:
            bpf(_MAP_GET_NEXT_KEY, attr(("I", map_fd), ("I", 0),
                                        ("Q", ctypes.addressof(prev) if prev else 0),
                                        ("Q", ctypes.addressof(nxt))), "map next key")
        except FileNotFoundError:
            return keys
        keys.append(nxt.raw)
        prev = ctypes.create_string_buffer(nxt.raw, key_size)


# Where the agent pins the eBPF backend's links and maps (a bpffs mount), and where the proxy
# finds the maps it shares with it.
DEFAULT_PIN_DIR = "/sys/fs/bpf/meshnode"
PIN_DIR_ENV = "MESHNODE_BPF_PIN_DIR"  # overrides DEFAULT_PIN_DIR
# getsockopt(SOL_SOCKET): the netns cookie the eBPF programs key pods by. From
# <asm-generic/socket.h>, which every ABI of core/syscalls.py uses (mips, sparc, parisc and
# alpha number socket options differently; they are not in that table).
SO_NETNS_COOKIE = 71


def default_pin_dir() -> str:
    """$MESHNODE_BPF_PIN_DIR (tests, the demo and benchmarks point it at a private bpffs),
    else DEFAULT_PIN_DIR."""
    return os.environ.get(PIN_DIR_ENV, DEFAULT_PIN_DIR)
