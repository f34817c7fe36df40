"""core/syscalls.py: the syscall numbers per ABI, checked against maintained sources (this
machine's kernel headers and the kernel's own syscall tables, tests/vectors/linux), the ABI
read right from machine and pointer size, and a clear error, not a wrong call, elsewhere."""

from __future__ import annotations

import errno
import glob
import os
import re
from pathlib import Path

import pytest

from core import bpf, syscalls
from core.syscalls import NUMBERS, UnsupportedArchitecture, abi, number

INCLUDE = Path("/usr/include")
VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "linux" / "syscall-tbl-excerpts.txt"

# Which ABI each source describes.
GENERIC_ABIS = ("aarch64", "riscv64", "loongarch64")  # <asm-generic/unistd.h>
X86_HEADERS = {"x86_64": "unistd_64.h", "i386": "unistd_32.h", "x32": "unistd_x32.h"}
KERNEL_TABLES = {"arch/arm/tools/syscall.tbl": "arm",
                 "arch/powerpc/kernel/syscalls/syscall.tbl": "powerpc",
                 "arch/s390/kernel/syscalls/syscall.tbl": "s390x"}
HEADERS_MISSING = "kernel headers missing: apt install linux-libc-dev"


def header_defines(*paths: Path) -> dict[str, int]:
    """`#define NAME value` of uapi headers read in order, values evaluated (numbers, or a
    sum with a name defined before, as <asm/unistd_x32.h>'s `(__X32_SYSCALL_BIT + 321)`,
    whose name <asm/unistd.h> defines)."""
    out: dict[str, int] = {}
    text = "\n".join(p.read_text() for p in paths)
    for name, value in re.findall(r"^#define\s+(\w+)\s+(.+?)\s*$", text, re.M):
        terms = value.strip("()").split("+")
        try:
            out[name] = sum(int(t.strip(), 0) if t.strip()[0].isdigit() else out[t.strip()]
                            for t in terms)
        except (KeyError, ValueError, IndexError):
            continue  # a macro, an alias to a name not defined: not a number
    return out


def x86_asm_dir() -> Path | None:
    hits = sorted(glob.glob(str(INCLUDE / "*" / "asm" / "unistd_64.h"))) + \
        sorted(glob.glob(str(INCLUDE / "asm" / "unistd_64.h")))
    for hit in hits:
        if (Path(hit).parent / "unistd_32.h").is_file():
            return Path(hit).parent
    return None


def kernel_table_lines() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current = None
    for line in VECTORS.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line.startswith("== "):
            current = line[3:]
            out[current] = []
        else:
            assert current is not None, line
            out[current].append(line)
    return out


def test_generic_abis_match_the_generic_header() -> None:
    header = INCLUDE / "asm-generic" / "unistd.h"
    assert header.is_file(), HEADERS_MISSING
    defines = header_defines(header)
    for name, by_abi in NUMBERS.items():
        for a in GENERIC_ABIS:
            assert by_abi[a] == defines[f"__NR_{name}"], (name, a)


def test_x86_abis_match_the_x86_headers() -> None:
    asm = x86_asm_dir()
    if asm is None:
        assert not os.uname().machine.startswith(("x86", "i")), HEADERS_MISSING
        pytest.skip("no x86 kernel headers on this non-x86 machine")
    for a, file in X86_HEADERS.items():
        defines = header_defines(asm / "unistd.h", asm / file)
        for name, by_abi in NUMBERS.items():
            assert by_abi[a] == defines[f"__NR_{name}"], (name, a, file)
    assert NUMBERS["bpf"]["x32"] == syscalls.X32_SYSCALL_BIT + NUMBERS["bpf"]["x86_64"]


def test_other_abis_match_the_kernels_tables() -> None:
    tables = kernel_table_lines()
    assert set(tables) == set(KERNEL_TABLES)
    for path, lines in tables.items():
        a = KERNEL_TABLES[path]
        found = {}
        for line in lines:
            nr, which, name = line.split()[:3]
            assert which in ("common", "64"), line  # the 64-bit (or only) ABI's entry
            found[name] = int(nr)
        for name, by_abi in NUMBERS.items():
            assert by_abi[a] == found[name], (name, a, path)


def test_every_abi_has_a_source() -> None:
    """An ABI added to the table without one of the sources above fails here."""
    checked = {*GENERIC_ABIS, *X86_HEADERS, *KERNEL_TABLES.values()}
    for name, by_abi in NUMBERS.items():
        assert set(by_abi) == checked, name


def test_the_parsers_are_not_vacuous(tmp_path: Path) -> None:
    (tmp_path / "a.h").write_text("#define __X32_SYSCALL_BIT\t0x40000000\n")
    (tmp_path / "b.h").write_text("#define __NR_bpf (__X32_SYSCALL_BIT + 321)\n"
                                  "#define __NR_read 0\n#define __NR_x __NR_y\n")
    assert header_defines(tmp_path / "a.h", tmp_path / "b.h") == {
        "__X32_SYSCALL_BIT": 0x40000000, "__NR_bpf": 0x40000141, "__NR_read": 0}
    assert "__NR_bpf" not in header_defines(tmp_path / "b.h")
    assert kernel_table_lines()["arch/arm/tools/syscall.tbl"][0].split()[:3] == \
        ["386", "common", "bpf"]


@pytest.mark.parametrize(("machine", "bits", "multiarch", "want"), [
    ("x86_64", 64, "x86_64-linux-gnu", "x86_64"),
    ("x86_64", 64, "", "x86_64"),
    ("x86_64", 32, "i386-linux-gnu", "i386"),       # a 32-bit process on a 64-bit kernel
    ("x86_64", 32, "x86_64-linux-gnux32", "x32"),
    ("i686", 32, "", "i386"),
    ("aarch64", 64, "aarch64-linux-gnu", "aarch64"),
    ("aarch64", 32, "arm-linux-gnueabihf", "arm"),  # armhf userland on an arm64 kernel
    ("armv7l", 32, "arm-linux-gnueabihf", "arm"),
    ("armv8l", 32, "", "arm"),                       # `linux32` on an arm64 kernel
    ("riscv64", 64, "riscv64-linux-gnu", "riscv64"),
    ("loongarch64", 64, "", "loongarch64"),
    ("ppc64le", 64, "powerpc64le-linux-gnu", "powerpc"),
    ("s390x", 64, "s390x-linux-gnu", "s390x"),
])
def test_abi_from_machine_and_pointer_size(machine: str, bits: int, multiarch: str,
                                           want: str) -> None:
    assert abi(machine, bits, multiarch) == want
    assert number("bpf", want) == NUMBERS["bpf"][want]


@pytest.mark.parametrize(("machine", "bits"), [
    ("mips64", 64), ("sparc64", 64), ("riscv64", 32), ("i686", 64), ("x86_64", 16), ("", 64)])
def test_an_unknown_architecture_is_a_clear_error(machine: str, bits: int) -> None:
    with pytest.raises(UnsupportedArchitecture) as info:
        abi(machine, bits, "")
    exc = info.value
    assert isinstance(exc, OSError) and exc.errno == errno.ENOSYS
    assert f"machine {machine!r} with {bits}-bit pointers" in str(exc.strerror)
    assert "known: aarch64, arm, i386" in str(exc.strerror)


def test_no_number_for_an_abi_or_a_call_is_a_clear_error() -> None:
    with pytest.raises(UnsupportedArchitecture, match=r"no bpf\(2\) syscall number for mips"):
        number("bpf", "mips")
    with pytest.raises(UnsupportedArchitecture, match="no pidfd_open"):
        number("pidfd_open", "x86_64")


def test_this_process() -> None:
    """This machine's ABI is known, and its number reaches the kernel's bpf(2): an unknown
    command is refused by bpf (EINVAL; EPERM unprivileged or under seccomp), not ENOSYS."""
    me = abi()
    assert number("bpf") == NUMBERS["bpf"][me]
    with pytest.raises(OSError) as info:
        bpf.bpf(9999, bpf.attr(("I", 0)), "bogus command")
    assert info.value.errno in (errno.EINVAL, errno.EPERM), info.value


class _NoCall:
    def syscall(self, *args: object) -> int:
        raise AssertionError(f"syscall{args} made on an unknown architecture")


def test_bpf_on_an_unknown_architecture_makes_no_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """The error reaches the callers' `except OSError` (the eBPF loader turns it into a
    LoadError, and the agent falls back) with the reason as its strerror."""
    def unknown() -> str:
        return abi("mips64", 64, "")

    monkeypatch.setattr(syscalls, "_this_abi", unknown)
    monkeypatch.setattr(bpf, "_libc", _NoCall())
    with pytest.raises(OSError) as info:
        bpf.obj_get("/sys/fs/bpf/meshnode/x")
    assert isinstance(info.value, UnsupportedArchitecture)
    assert "unsupported architecture: machine 'mips64'" in str(info.value.strerror)


def test_so_netns_cookie_is_the_generic_socket_option() -> None:
    header = INCLUDE / "asm-generic" / "socket.h"
    assert header.is_file(), HEADERS_MISSING
    assert header_defines(header)["SO_NETNS_COOKIE"] == bpf.SO_NETNS_COOKIE


def test_the_ebpf_loader_reports_it_as_a_load_error(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    """The loader's first numbered call (attaching a program: nothing pinned yet) turns it
    into a LoadError, the error the agent answers with capture.fallback."""
    from agent.redirect.ebpf import loader

    monkeypatch.setattr(syscalls, "_this_abi", lambda: abi("sparc64", 64, ""))
    monkeypatch.setattr(bpf, "_libc", _NoCall())
    program = loader.PROGRAMS[0]
    with pytest.raises(loader.LoadError,
                       match=rf"attach {re.escape(program.hook)} to /cg: unsupported "
                             r"architecture: machine 'sparc64' with 64-bit pointers"):
        loader.Loader(pin_dir=str(tmp_path), cgroup="/cg")._attach(program, 0, 0)
