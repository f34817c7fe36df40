"""What the plugin needs to start, and the equivalences its own JSON and name checks rely on.

meshnode-cni is a static Go binary so that a node needs no interpreter for it (minimal node
OSes have none). These tests prove that on the shipped file: its ELF headers ask for no
program interpreter and no shared library, and an ADD works in a chroot that holds nothing
but the binary and the agent's socket. Because the agent is Python, the plugin decodes and
encodes JSON exactly as Python's json module does, and checks names exactly as the
regular expressions of the spec would; both are compared against Python here, through the
binary.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .conftest import (
    PLUGIN,
    FakeAgent,
    attachment_env,
    bridge_prev_result,
    check_streams,
    make_conf,
    run_plugin,
)
from .test_fuzz import FUZZ, json_values

# --------------------------------------------------------------------------- no interpreter

PT_INTERP, PT_DYNAMIC = 3, 2


def program_headers(path: Path) -> list[int]:
    """The p_type of every ELF program header (64-bit little-endian files only)."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF", f"{path} is not an ELF file"
    assert data[4] == 2 and data[5] == 1, f"{path}: not ELF64 little-endian"
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]


def test_binary_is_static() -> None:
    headers = program_headers(PLUGIN)
    assert PT_INTERP not in headers  # no ld.so: the kernel runs it directly
    assert PT_DYNAMIC not in headers  # no shared libraries, not even libc
    assert PLUGIN.read_bytes()[:2] != b"#!"  # not a script
    proc = subprocess.run(["ldd", str(PLUGIN)], capture_output=True, text=True, timeout=10,
                          check=False)
    assert "not a dynamic executable" in proc.stdout + proc.stderr


def test_static_check_can_fail() -> None:
    """Positive control: a dynamically linked program does show both headers."""
    headers = program_headers(Path(shutil.which("true") or "/bin/true").resolve())
    assert PT_INTERP in headers and PT_DYNAMIC in headers


@pytest.fixture
def bare_root() -> Iterator[Path]:
    """A directory holding only the plugin, to chroot into: no /usr, no /lib, no /dev."""
    root = Path(tempfile.mkdtemp(prefix="mncni-root-", dir="/tmp"))
    shutil.copy2(PLUGIN, root / "meshnode-cni")
    (root / "run").mkdir()
    yield root
    shutil.rmtree(root, ignore_errors=True)


def run_chrooted(root: Path, argv: list[str], env: dict[str, str],
                 stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, input=stdin, env=env, capture_output=True, timeout=20,
                          check=False, preexec_fn=lambda: os.chroot(root))


def test_add_works_with_no_interpreter_on_the_node(bare_root: Path) -> None:
    """ADD through a real socket, in a chroot where no python3 (nor any other program or
    library) exists: the plugin needs nothing from the node but the kernel."""
    agent = FakeAgent(str(bare_root / "run" / "cni.sock"))
    try:
        prev = bridge_prev_result("1.0.0")
        conf = make_conf("1.0.0", "/run/cni.sock", prev)
        env = attachment_env("ADD")  # no PATH: nothing to look up
        proc = run_chrooted(bare_root, ["/meshnode-cni"], env, json.dumps(conf).encode())
    finally:
        agent.stop()
    logs = check_streams(proc.returncode, proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stdout
    assert json.loads(proc.stdout) == prev
    assert [r["msg"] for r in logs] == ["pod captured"]
    assert len(agent.requests) == 1 and agent.requests[0]["cmd"] == "ADD"
    # What the chroot held: the binary and the socket, and no interpreter anywhere.
    assert sorted(str(p.relative_to(bare_root)) for p in bare_root.rglob("*")) == [
        "meshnode-cni", "run", "run/cni.sock"]
    assert not any(p.name.startswith("python") for p in bare_root.rglob("*"))


def test_the_chroot_does_hide_interpreters(bare_root: Path) -> None:
    """Positive control: in the same chroot, a python3 (or any dynamically linked program)
    cannot even start, because its loader and libraries are not there."""
    python = Path(sys.executable).resolve()
    shutil.copy2(python, bare_root / "python3")
    with pytest.raises(FileNotFoundError):  # execve finds no ld.so for it
        run_chrooted(bare_root, ["/python3", "-c", "pass"], {}, b"")


# --------------------------------------------------------------------------- JSON decoding


@pytest.mark.parametrize(
    ("stdin", "details"),
    [
        # json.loads's own messages: the agent side reads the same JSON the same way.
        (b"{", "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
        (b"", "Expecting value: line 1 column 1 (char 0)"),
        (b'{"cniVersion": "1.0.0"} {}', "Extra data: line 1 column 25 (char 24)"),
        (b'{"a" 1}', "Expecting ':' delimiter: line 1 column 6 (char 5)"),
        (b'{"a": "\x01"}', "Invalid control character at: line 1 column 8 (char 7)"),
        (b"\xef\xbb\xbf{}", "Unexpected UTF-8 BOM (decode using utf-8-sig)"),
        (b'{"a": -Infinity}', "-Infinity is not valid JSON"),
        (b'{"a": [1e400]}', "number 1e400 is out of range"),
        (b"[" * 100000, "maximum recursion depth exceeded while decoding a JSON array"),
        (b'"\xed\xa0\x80"', "'utf-8' codec can't decode byte 0xed in position 1"),
        # positions count characters, not bytes ("é" is two)
        (b'{"\xc3\xa9": [1,\n 2,, 3]}', "Expecting value: line 2 column 4 (char 13)"),
        (b"[" + b"1" * 4301 + b"]", "Exceeds the limit (4300 digits) for integer string"),
    ],
)
def test_decode_errors_explain_themselves(stdin: bytes, details: str) -> None:
    run = run_plugin(attachment_env("ADD"), stdin)
    assert run.error["code"] == 6
    assert details in run.error["details"]


def test_nesting_limit() -> None:
    """512 levels decode; 513 do not (the agent's json.loads must cope with what is sent)."""
    def nested(depth: int) -> bytes:
        return b'{"cniVersion": "1.0.0", "x": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"

    assert run_plugin(attachment_env("ADD"), nested(512)).error["code"] == 7  # decoded
    assert run_plugin(attachment_env("ADD"), nested(513)).error["code"] == 6


# Fragments that make or break JSON: structure, constants, bad bytes, bad escapes.
JSON_DEBRIS = [
    *(bytes([byte]) for byte in b'{}[],:"\\ \n\x00\xff'),
    *b"NaN -Infinity 1e400 1e5 01 1. -0 1E-400 nul \\ud800 \\udc00 \\ud83d\\ude00".split(b" "),
    b"\xc2\xa0",
]


def mutated_json() -> st.SearchStrategy[bytes]:
    """Valid documents, raw bytes and documents with JSON-ish debris spliced in."""
    debris = st.sampled_from(JSON_DEBRIS)

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        doc = bytearray(
            json.dumps(draw(json_values), indent=draw(st.sampled_from([None, 1])),
                       ensure_ascii=draw(st.booleans())).encode()
        )
        for _ in range(draw(st.integers(0, 3))):
            pos = draw(st.integers(0, len(doc)))
            doc[pos : pos + draw(st.integers(0, 2))] = draw(debris)
        return bytes(doc)

    return st.one_of(build(), st.binary(max_size=40))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:32]} is out of range")
    return value


def reference_decode(raw: bytes) -> Any:
    """The contract: strict UTF-8, json.loads, no NaN/Infinity, no float overflow."""
    return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant,
                      parse_float=_parse_float)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


@settings(FUZZ, max_examples=1500)
@given(raw=mutated_json())
def test_decode_errors_are_json_loads_errors(raw: bytes) -> None:
    """Whatever json.loads refuses, the plugin refuses with json's message and position;
    whatever it accepts, the plugin decodes (and then judges as a configuration)."""
    run = run_plugin(attachment_env("ADD"), raw)
    try:
        conf = reference_decode(raw)
    except (ValueError, RecursionError) as exc:
        assert run.error["code"] == 6
        assert run.error["details"] == _clip(str(exc), 300)
        return
    assert run.error["code"] in (1, 7), run.error  # decoded: a config problem, not code 6
    if not isinstance(conf, dict):
        assert run.error["msg"] == "network configuration must be a JSON object"


@pytest.fixture(scope="module")
def passthrough_agent() -> Iterator[FakeAgent]:
    path = tempfile.mkdtemp(prefix="mncni-", dir="/tmp")
    agent = FakeAgent(os.path.join(path, "cni.sock"))
    yield agent
    agent.stop()
    shutil.rmtree(path, ignore_errors=True)


@settings(FUZZ, max_examples=1000)
@given(doc=mutated_json())
def test_passed_through_values_are_json_dumps_of_json_loads(
    passthrough_agent: FakeAgent, doc: bytes
) -> None:
    """Any valid JSON inside prevResult comes back out byte for byte as json.dumps would
    print what json.loads read: key order, repeated keys, number spellings (1E5, -0, 1e-400),
    escapes and lone surrogates included."""
    try:
        reference_decode(doc)
    except (ValueError, RecursionError):
        return
    passthrough_agent.answer(b'{"ok": true}\n')
    path = json.dumps(passthrough_agent.path).encode()
    stdin = (b'{"cniVersion": "1.0.0", "agent_socket": ' + path
             + b', "prevResult": {"x": ' + doc + b', "cniVersion": "1.0.0"}}')
    run = run_plugin(attachment_env("ADD"), stdin)
    expected = reference_decode(stdin)["prevResult"]
    assert run.rc == 0, run
    assert run.stdout == (json.dumps(expected, allow_nan=False) + "\n").encode()


# --------------------------------------------------------------------------- names

# The spec's rules as regular expressions: the reference for the plugin's checks.
CONTAINER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
IFNAME_RE = re.compile(r"[^/:\s]{1,15}")


# Never created: a name the plugin accepts then fails with 11 (agent absent), a refused one with 4.
ABSENT_SOCKET = "/nonexistent-meshnode-test/cni.sock"


def name_outcome(key: str, text: str) -> bool:
    """True if the plugin accepted `text` as `key` (it then fails only on the absent agent)."""
    conf = make_conf("1.0.0", ABSENT_SOCKET, bridge_prev_result("1.0.0"))
    code: int = run_plugin(attachment_env("ADD", **{key: text}), conf).error["code"]
    assert code in (4, 11), code
    return code == 11


def ifname_expected(text: str) -> bool:
    return bool(IFNAME_RE.fullmatch(text)) and text not in (".", "..")


def test_every_whitespace_character_is_refused_in_ifname() -> None:
    spaces = [chr(c) for c in range(1, sys.maxunicode + 1) if chr(c).isspace()]
    assert len(spaces) >= 25  # the table is what Python says it is
    for char in spaces:
        assert not name_outcome("CNI_IFNAME", "a" + char), repr(char)
    for code in range(1, 128):  # and every ASCII character, at both positions
        for text in (chr(code), "a" + chr(code)):
            assert name_outcome("CNI_IFNAME", text) == ifname_expected(text), text
            assert name_outcome("CNI_CONTAINERID", text) == bool(
                CONTAINER_ID_RE.fullmatch(text)), text


# Environment strings: no NUL; lone surrogates stand for non-UTF-8 bytes (surrogateescape).
names = st.text(
    st.sampled_from("aZ09_.-/: \t\n\x0b\x1c\x85\xa0\u2028\u3000\u200b\u180eé\udcff")
    | st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]),
    max_size=20,
)


@settings(FUZZ, max_examples=1500)
@given(text=names, key=st.sampled_from(["CNI_IFNAME", "CNI_CONTAINERID"]))
def test_name_checks_match_the_regexes(text: str, key: str) -> None:
    if text == "":
        return  # an empty variable is "unset", tested in test_plugin
    expected = ifname_expected(text) if key == "CNI_IFNAME" else bool(
        CONTAINER_ID_RE.fullmatch(text))
    assert name_outcome(key, text) == expected
