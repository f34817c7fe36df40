"""Start-up cost guards for meshnode-cni, and the equivalence proofs they rely on.

The plugin avoids importing json and re (about 10 ms of a ~20 ms run): it decodes and
encodes with the C module _json directly and validates names with plain string checks.
These tests pin down that (1) the heavy modules really stay out of a normal run and (2) the
replacements behave exactly like json.loads/json.dumps and the former regular expressions.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
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
    plugin_module,
    run_plugin,
)
from .test_fuzz import FUZZ, json_values

# Modules that a normal run must not import: json and re cost ~10 ms together, socket.py
# ~2 ms (selectors, IntEnum tables). Submodules count too (json.decoder, re._parser, ...).
HEAVY = ("json", "re", "socket", "selectors", "enum")


def interpreter_argv() -> list[str]:
    """The shebang's interpreter and flags, as the kernel would pass them."""
    with open(PLUGIN, "rb") as fh:
        line = fh.readline().decode()
    assert line.startswith("#!")
    interpreter, _, flags = line[2:].strip().partition(" ")
    return [interpreter, flags] if flags else [interpreter]


def imported_modules(
    env: dict[str, str], stdin: bytes = b""
) -> tuple[set[str], subprocess.CompletedProcess[bytes]]:
    """Run the plugin under -X importtime; the set of modules the run imported."""
    proc = subprocess.run(
        [*interpreter_argv(), "-X", "importtime", str(PLUGIN)],
        input=stdin,
        env=env,
        capture_output=True,
        timeout=20,
        check=False,
    )
    modules = set()
    log_lines = []
    for line in proc.stderr.splitlines():
        if line.startswith(b"import time:"):
            modules.add(line.rsplit(b"|", 1)[1].strip().decode())
        else:
            log_lines.append(line)
    check_streams(proc.returncode, proc.stdout, b"\n".join(log_lines))
    # Positive control: the parsing above works, so an absent name means "not imported".
    assert "_json" in modules, proc.stderr[-2000:]
    return modules, proc


def heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if m in HEAVY or m.startswith(tuple(f"{h}." for h in HEAVY))}


def test_version_imports_nothing_heavy() -> None:
    modules, proc = imported_modules({"CNI_COMMAND": "VERSION"})
    assert proc.returncode == 0
    assert heavy(modules) == set()


@pytest.mark.parametrize("command", ["ADD", "CHECK", "DEL"])
def test_agent_round_trip_imports_nothing_heavy(agent: FakeAgent, command: str) -> None:
    conf = make_conf("1.1.0", agent.path, bridge_prev_result("1.1.0"))
    modules, proc = imported_modules(attachment_env(command), json.dumps(conf).encode())
    assert proc.returncode == 0, proc.stdout
    assert len(agent.requests) == 1  # the agent was really asked: the full path ran
    assert "_socket" in modules
    assert heavy(modules) == set()


def test_heavy_import_detection_works() -> None:
    """The guard above can fail: a malformed config does import json, for its message."""
    modules, proc = imported_modules(attachment_env("ADD"), b"{")
    assert proc.returncode == 1
    assert "json" in heavy(modules)


# --------------------------------------------------------------------------- JSON decoding


@pytest.mark.parametrize(
    ("stdin", "details"),
    [
        # json.loads's own messages, although the plugin had not imported json before.
        (b"{", "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
        (b"", "Expecting value: line 1 column 1 (char 0)"),
        (b'{"cniVersion": "1.0.0"} {}', "Extra data: line 1 column 25 (char 24)"),
        (b'{"a" 1}', "Expecting ':' delimiter: line 1 column 6 (char 5)"),
        (b'{"a": "\x01"}', "Invalid control character at: line 1 column 8 (char 7)"),
        (b"\xef\xbb\xbf{}", "Unexpected UTF-8 BOM (decode using utf-8-sig)"),
        (b'{"a": -Infinity}', "-Infinity is not valid JSON"),
        (b'{"a": [1e400]}', "number 1e400 is out of range"),
        (b"[" * 100000, "maximum recursion depth exceeded"),
        (b'"\xed\xa0\x80"', "'utf-8' codec can't decode byte 0xed"),
    ],
)
def test_decode_errors_explain_themselves(stdin: bytes, details: str) -> None:
    run = run_plugin(attachment_env("ADD"), stdin)
    assert run.error["code"] == 6
    assert details in run.error["details"]


def json_outcome(decode: Any, raw: bytes) -> tuple[str, Any, Any]:
    """("ok", value, key order) or ("error", exception type family, message)."""
    try:
        value = decode(raw)
    except RecursionError as exc:
        return ("error", "RecursionError", str(exc))
    except ValueError as exc:
        return ("error", "ValueError", str(exc))
    return ("ok", value, json.dumps(value))  # json.dumps keeps key order: compares it too


def reference_decode(raw: bytes) -> Any:
    module = plugin_module()
    return json.loads(
        raw.decode("utf-8"),
        parse_constant=module._reject_constant,
        parse_float=module._parse_float,
    )


@contextmanager
def without_json_decoder() -> Iterator[None]:
    """As in the real plugin process, where json has not been imported.

    On Python 3.11 _json then reports syntax errors as a message-less SystemError, which
    decode_json must turn into json's ValueError. The test's own json comes back afterwards.
    """
    with pytest.MonkeyPatch.context() as patch:
        for name in [name for name in sys.modules if name == "json" or name.startswith("json.")]:
            patch.delitem(sys.modules, name)
        yield


# Fragments that make or break JSON: structure, constants, bad bytes, bad escapes.
JSON_DEBRIS = [
    *(bytes([byte]) for byte in b'{}[],:"\\ \n\x00\xff'),
    *b"NaN -Infinity 1e400 1e5 01 1. nul \\ud800 \xc2\xa0".split(b" "),
]


def mutated_json() -> st.SearchStrategy[bytes]:
    """Valid documents, raw bytes and documents with JSON-ish debris spliced in."""
    debris = st.sampled_from(JSON_DEBRIS)

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        doc = bytearray(
            json.dumps(draw(json_values), indent=draw(st.sampled_from([None, 1]))).encode()
        )
        for _ in range(draw(st.integers(0, 3))):
            pos = draw(st.integers(0, len(doc)))
            doc[pos : pos + draw(st.integers(0, 2))] = draw(debris)
        return bytes(doc)

    return st.one_of(build(), st.binary(max_size=40))


@settings(FUZZ, max_examples=1500)
@given(raw=mutated_json())
def test_decode_json_is_json_loads(raw: bytes) -> None:
    assert json_outcome(plugin_module().decode_json, raw) == json_outcome(reference_decode, raw)


def test_syntax_error_before_json_is_imported() -> None:
    with without_json_decoder(), pytest.raises(ValueError, match="Expecting property name"):
        plugin_module().decode_json(b"{")


@settings(FUZZ, max_examples=500)
@given(raw=mutated_json())
def test_decode_json_is_json_loads_before_json_is_imported(raw: bytes) -> None:
    expected = json_outcome(reference_decode, raw)
    with without_json_decoder():
        assert json_outcome(plugin_module().decode_json, raw) == expected


# --------------------------------------------------------------------------- JSON encoding

encodable = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities included: allow_nan must behave as in json.dumps
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(
            st.text(max_size=8) | st.integers() | st.booleans() | st.none(), inner, max_size=4
        )
    ),
    max_leaves=12,
)


def encode_outcome(encode: Any, obj: Any, **kwargs: Any) -> tuple[str, str]:
    try:
        return ("ok", encode(obj, **kwargs))
    except (ValueError, TypeError) as exc:
        return (type(exc).__name__, str(exc))


@settings(FUZZ, max_examples=1500)
@given(
    obj=encodable | st.builds(object) | st.lists(st.builds(bytes)),
    separators=st.sampled_from([(", ", ": "), (",", ":")]),
    allow_nan=st.booleans(),
    default=st.sampled_from([None, str]),
)
def test_encode_json_is_json_dumps(
    obj: Any, separators: tuple[str, str], allow_nan: bool, default: Any
) -> None:
    kwargs: dict[str, Any] = {"separators": separators, "allow_nan": allow_nan}
    if default is not None:
        kwargs["default"] = default
    assert encode_outcome(plugin_module().encode_json, obj, **kwargs) == encode_outcome(
        json.dumps, obj, **kwargs
    )


def test_encode_json_detects_cycles() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference"):
        plugin_module().encode_json(loop)


# --------------------------------------------------------------------------- names

# The regular expressions the plugin used before it stopped importing re: the reference.
CONTAINER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
IFNAME_RE = re.compile(r"[^/:\s]{1,15}")


def test_name_checks_match_the_regexes_for_every_character() -> None:
    module = plugin_module()
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        for text in (char, "a" + char):  # first and later positions
            assert module.valid_container_id(text) == bool(CONTAINER_ID_RE.fullmatch(text)), text
            expected = bool(IFNAME_RE.fullmatch(text)) and text not in (".", "..")
            assert module.valid_ifname(text) == expected, text


names = st.text(
    st.sampled_from("aZ09_.-/: \t\n\x0b\x1c\x85\xa0\u2028\u3000é\ud800") | st.characters(),
    max_size=20,
)


@settings(FUZZ, max_examples=3000)
@given(text=names)
def test_name_checks_match_the_regexes(text: str) -> None:
    module = plugin_module()
    assert module.valid_container_id(text) == bool(CONTAINER_ID_RE.fullmatch(text))
    expected = bool(IFNAME_RE.fullmatch(text)) and text not in (".", "..")
    assert module.valid_ifname(text) == expected
