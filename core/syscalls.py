"""Linux system call numbers per ABI, for the calls glibc has no wrapper for (bpf(2)).

Everything else meshnode calls goes through a libc wrapper (setns, unshare, statfs) and needs
no number. A number is only valid for the ABI of the calling process, which is not always the
kernel's: a 32-bit process on an x86_64 or arm64 kernel uses the 32-bit table. So the ABI is
read from the machine and the interpreter's pointer size, and an ABI missing from the table
is an error naming it (`UnsupportedArchitecture`), never a guess: on another ABI the same
number is a different call.

Sources (a number, once assigned, never changes; tests/unit/test_syscalls.py checks the table
against this machine's kernel headers and the kernel's own tables, tests/vectors/linux):
  x86_64, i386, x32     arch/x86/entry/syscalls/syscall_{64,32}.tbl
                        (<asm/unistd_64.h>, <asm/unistd_32.h>, <asm/unistd_x32.h>)
  aarch64, riscv64,     include/uapi/asm-generic/unistd.h (the generic table)
  loongarch64
  arm (EABI)            arch/arm/tools/syscall.tbl
  powerpc (ppc64le)     arch/powerpc/kernel/syscalls/syscall.tbl
  s390x                 arch/s390/kernel/syscalls/syscall.tbl
"""

from __future__ import annotations

import errno
import os
import struct
import sys
from functools import cache

X32_SYSCALL_BIT = 0x40000000

# name -> ABI -> number
NUMBERS: dict[str, dict[str, int]] = {
    "bpf": {
        "x86_64": 321,
        "i386": 357,
        "x32": X32_SYSCALL_BIT + 321,
        "aarch64": 280,
        "riscv64": 280,
        "loongarch64": 280,
        "arm": 386,
        "powerpc": 361,
        "s390x": 351,
    },
}

# `uname -m` -> (ABI of a 64-bit process, ABI of a 32-bit process); None: no such process.
_MACHINES: dict[str, tuple[str | None, str | None]] = {
    "x86_64": ("x86_64", "i386"),   # a 32-bit process is i386, or x32 (see abi())
    "amd64": ("x86_64", "i386"),
    **{m: (None, "i386") for m in ("i386", "i486", "i586", "i686")},
    "aarch64": ("aarch64", "arm"),  # arm: a 32-bit (EABI) process on an arm64 kernel
    "aarch64_be": ("aarch64", "arm"),
    "arm64": ("aarch64", "arm"),
    **{m: (None, "arm") for m in ("armv6l", "armv7l", "armv8l", "armv8b", "arm")},
    "riscv64": ("riscv64", None),
    "loongarch64": ("loongarch64", None),
    "ppc64le": ("powerpc", "powerpc"),  # one table for ppc64le, ppc64 and ppc
    "ppc64": ("powerpc", "powerpc"),
    "ppc": (None, "powerpc"),
    "s390x": ("s390x", None),
}


class UnsupportedArchitecture(OSError):
    """No syscall number for this process's ABI. An OSError (ENOSYS), so that the callers'
    `except OSError` report it like a failed call, with this message as its strerror."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSYS, message)


def abi(machine: str | None = None, pointer_bits: int | None = None,
        multiarch: str | None = None) -> str:
    """This process's syscall ABI, a key of the NUMBERS tables; the arguments (for tests)
    default to this process's `uname -m`, pointer size and Python's multiarch triplet."""
    machine = os.uname().machine if machine is None else machine
    bits = struct.calcsize("P") * 8 if pointer_bits is None else pointer_bits
    if multiarch is None:
        multiarch = getattr(sys.implementation, "_multiarch", "") or ""
    pair = _MACHINES.get(machine)
    name = None if pair is None else pair[0] if bits == 64 else pair[1] if bits == 32 else None
    if name == "i386" and multiarch.endswith("x32"):
        name = "x32"  # x86_64 kernel, 32-bit pointers, 64-bit syscall entry with the x32 bit
    if name is None:
        known = ", ".join(sorted({a for nums in NUMBERS.values() for a in nums}))
        raise UnsupportedArchitecture(
            f"unsupported architecture: machine {machine!r} with {bits}-bit pointers has no "
            f"entry in meshnode's syscall table (core/syscalls.py; known: {known})")
    return name


@cache
def _this_abi() -> str:
    return abi()


def number(name: str, abi_name: str | None = None) -> int:
    """The number of syscall `name` for `abi_name` (default: this process's ABI).
    Raises UnsupportedArchitecture if the table has none."""
    abi_name = _this_abi() if abi_name is None else abi_name
    try:
        return NUMBERS[name][abi_name]
    except KeyError:
        raise UnsupportedArchitecture(
            f"unsupported architecture: no {name}(2) syscall number for {abi_name} in "
            f"meshnode's syscall table (core/syscalls.py)") from None
