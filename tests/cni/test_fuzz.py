"""Property tests for meshnode-cni: whatever the runtime or the agent send, the plugin answers
with exactly one valid document, never a crash dump, never a hang, and never lets a pod
through uncaptured.

Every case execs the real binary, as a runtime does (a run costs a few milliseconds).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from .conftest import (
    SUPPORTED,
    FakeAgent,
    attachment_env,
    bridge_prev_result,
    make_conf,
    run_plugin,
)

# An environment cannot hold NUL; "\udcff" reaches the plugin as the byte 0xff (not UTF-8).
COMMANDS = ["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION", "", "add", "ADD ", "\x01",
            "AD\udcffD"]
FUZZ = settings(
    deadline=None,
    database=None,  # keep the repository clean of .hypothesis/
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def live_agent() -> Iterator[FakeAgent]:
    path = tempfile.mkdtemp(prefix="mncni-fuzz-", dir="/tmp")
    agent = FakeAgent(os.path.join(path, "cni.sock"))
    yield agent
    agent.stop()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def dead_socket() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="mncni-fuzz-", dir="/tmp")
    yield os.path.join(path, "absent.sock")
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- strategies

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
cidr = st.one_of(
    st.tuples(ipv4, st.integers(0, 32)).map(lambda t: f"{t[0]}/{t[1]}"),
    st.tuples(ipv6, st.integers(0, 128)).map(lambda t: f"{t[0]}/{t[1]}"),
)
bad_address = st.one_of(
    st.text(max_size=30),
    st.integers(),
    st.none(),
    st.just("10.0.0.1/99"),
    st.just("::1%eth0/64"),
    st.just("10.0.0.1/"),
    st.just("1.2.3.4/٣"),
)
ip_entry = st.one_of(
    st.fixed_dictionaries(
        {"address": cidr},
        optional={
            "gateway": ipv4,
            "interface": st.integers(0, 3),
            "version": st.sampled_from(["4", "6"]),
        },
    ),
    st.fixed_dictionaries({"address": bad_address}),
    json_values,
)
good_prev_results = st.one_of(
    st.sampled_from(SUPPORTED).map(bridge_prev_result),
    st.fixed_dictionaries(
        {"cniVersion": st.sampled_from(SUPPORTED)},
        optional={
            "ips": st.lists(
                st.fixed_dictionaries(
                    {"address": cidr},
                    optional={"gateway": ipv4, "interface": st.integers(0, 3)},
                ),
                max_size=4,
            ),
            "interfaces": st.lists(
                st.fixed_dictionaries({"name": st.text(max_size=15)}), max_size=3
            ),
            "dns": st.fixed_dictionaries({}, optional={"nameservers": st.lists(ipv4, max_size=2)}),
        },
    ),
)
bad_prev_results = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "cniVersion": st.sampled_from([*SUPPORTED, "0.2.0", "9.9.9"]) | json_scalars,
            "ips": st.lists(ip_entry, max_size=4) | json_values,
            "interfaces": st.lists(json_values, max_size=3),
        },
    ),
)
bad_versions = st.sampled_from(["0.1.0", "0.2.0", "1.2.0", "", "1.0"]) | json_scalars
kubelet_args = st.builds(
    lambda ns, name: (
        f"IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};"
        "K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=0a1b"
    ),
    st.sampled_from(["default", "shop", "kube-system", "meshnode-system"]),
    st.sampled_from(["web-0", "meshnode-node-abcde", "cart-7d9f8c6b5-x2x9z"]),
)
# Environment strings: no NUL and no lone surrogates (an execve() environment cannot hold them).
env_chars = st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"])
cni_args_text = st.one_of(
    st.text(env_chars, max_size=60),
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "K8S_POD_NAME",
                    "K8S_POD_NAMESPACE",
                    "K8S_POD_UID",
                    "K8S_POD_INFRA_CONTAINER_ID",
                    "IgnoreUnknown",
                    "X",
                ]
            ),
            st.sampled_from(["", "=", ";"])
            | st.text(
                st.characters(blacklist_characters=";\x00", blacklist_categories=["Cs"]),
                max_size=12,
            ),
            st.sampled_from(["=", "", "=="]),
        ),
        max_size=6,
    ).map(lambda parts: ";".join(f"{k}{sep}{v}" for k, v, sep in parts)),
)
env_text = st.text(env_chars, max_size=40)


def mostly(draw: st.DrawFn, good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
    """A valid value 7 times in 8: enough valid input to reach the agent, enough junk to hurt."""
    return draw(bad) if draw(st.integers(0, 7)) == 0 else draw(good)


@st.composite
def environments(draw: st.DrawFn, command: str) -> dict[str, str]:
    env = attachment_env(command, CNI_ARGS=mostly(draw, kubelet_args, cni_args_text))
    for key in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"):
        choice = draw(st.integers(0, 15))
        if choice == 0:
            del env[key]
        elif choice == 1:
            env[key] = draw(env_text)
    return env


@st.composite
def configs(draw: st.DrawFn, socket_path: str) -> dict[str, Any]:
    conf: dict[str, Any] = {"cniVersion": mostly(draw, st.sampled_from(SUPPORTED), bad_versions)}
    conf.update(name="k8s", type="meshnode-cni", agent_socket=socket_path, timeout_seconds=2)
    if draw(st.integers(0, 9)):
        conf["prevResult"] = mostly(draw, good_prev_results, bad_prev_results)
    conf["cni.dev/valid-attachments"] = mostly(
        draw,
        st.lists(
            st.fixed_dictionaries(
                {"containerID": st.from_regex(r"\A[a-z0-9]{1,12}\Z"), "ifname": st.just("eth0")}
            ),
            max_size=3,
        ),
        json_values,
    )
    for key, good in (
        ("exclude_namespaces", st.lists(st.sampled_from(["kube-system", "shop", "x"]), max_size=2)),
        (
            "agent_pod",
            st.fixed_dictionaries(
                {
                    "namespace": st.just("meshnode-system"),
                    "name_prefix": st.text(min_size=1, max_size=8),
                }
            ),
        ),
        ("capture", st.dictionaries(st.text(max_size=8), json_values, max_size=3)),
        ("timeout_seconds", st.floats(0.1, 2)),
        ("name", st.text(max_size=10)),
    ):
        if draw(st.integers(0, 3)) == 0:
            conf[key] = mostly(draw, good, json_values)
    return conf


def expected_add_output(conf: dict[str, Any]) -> dict[str, Any]:
    prev = conf["prevResult"]
    out = dict(prev, cniVersion=conf["cniVersion"])
    legacy = ("0.3.0", "0.3.1", "0.4.0")
    source = prev.get("cniVersion", conf["cniVersion"])
    if (source in legacy) != (conf["cniVersion"] in legacy) and isinstance(prev.get("ips"), list):
        out["ips"] = [
            dict(ip, version="6" if ":" in ip["address"] else "4")
            if conf["cniVersion"] in legacy
            else {k: v for k, v in ip.items() if k != "version"}
            for ip in prev["ips"]
        ]
    return out


# --------------------------------------------------------------------------- properties


@settings(FUZZ, max_examples=1500)
@given(
    command=st.sampled_from(COMMANDS),
    stdin=st.binary(max_size=300) | st.text(max_size=200).map(str.encode),
)
def test_random_stdin_never_crashes(dead_socket: str, command: str, stdin: bytes) -> None:
    run = run_plugin(attachment_env(command), stdin)  # check_streams asserts the invariants
    if command != "VERSION":
        assert run.rc == 1  # random bytes are never a config that points at a live agent


@settings(FUZZ, max_examples=2000)
@given(data=st.data(), command=st.sampled_from(["ADD", "DEL", "CHECK", "STATUS", "GC"]))
def test_structured_configs_keep_the_contract(
    live_agent: FakeAgent, data: st.DataObject, command: str
) -> None:
    live_agent.answer(b'{"ok": true}\n')
    conf = data.draw(configs(live_agent.path))
    env = data.draw(environments(command))
    before = len(live_agent.requests)
    run = run_plugin(env, json.dumps(conf).encode())
    contacted = len(live_agent.requests) > before
    event(f"{command}: {'ok' if run.rc == 0 else run.json['code']}, agent contacted: {contacted}")
    if run.rc == 0 and command == "ADD":
        assert run.json == expected_add_output(conf)
    if run.rc == 0 and command in ("CHECK", "STATUS", "GC", "DEL"):
        assert run.stdout == b""
    if contacted:
        request = live_agent.requests[-1]
        assert request["v"] == 1 and request["cmd"] == command
        if command in ("ADD", "CHECK", "DEL"):
            assert request["container_id"] == env["CNI_CONTAINERID"]
            assert request["ifname"] == env["CNI_IFNAME"]
            assert all(isinstance(ip, str) for ip in request["ips"])
    if run.rc != 0 and command == "ADD":
        assert "ips" not in run.json  # fail closed: never the prevResult


@settings(FUZZ, max_examples=800)
@given(
    reply=st.one_of(
        st.binary(max_size=200),
        json_values.map(lambda v: (json.dumps(v) + "\n").encode()),
        st.fixed_dictionaries(
            {"ok": st.booleans() | json_scalars},
            optional={"code": json_scalars, "msg": json_values, "details": json_values},
        ).map(lambda v: (json.dumps(v) + "\n").encode()),
    )
)
def test_only_a_clear_yes_from_the_agent_lets_a_pod_start(
    live_agent: FakeAgent, reply: bytes
) -> None:
    live_agent.answer(reply)
    prev = bridge_prev_result("1.0.0")
    run = run_plugin(
        attachment_env("ADD"), json.dumps(make_conf("1.0.0", live_agent.path, prev)).encode()
    )
    try:
        parsed = json.loads(reply.split(b"\n", 1)[0])
    except ValueError:
        parsed = None
    said_yes = isinstance(parsed, dict) and parsed.get("ok") is True
    assert (run.rc == 0) == said_yes
    if said_yes:
        assert run.json == prev
    else:
        code = (
            parsed.get("code") if isinstance(parsed, dict) and parsed.get("ok") is False else None
        )
        valid = isinstance(code, int) and not isinstance(code, bool) and code > 0
        assert run.error["code"] == (code if valid else 11)


@settings(FUZZ, max_examples=600)
@given(args=cni_args_text)
def test_cni_args_parse_like_kubelet_writes_them(live_agent: FakeAgent, args: str) -> None:
    live_agent.answer(b'{"ok": true}\n')
    before = len(live_agent.requests)
    conf = make_conf("1.0.0", live_agent.path, bridge_prev_result("1.0.0"), exclude_namespaces=[])
    run = run_plugin(attachment_env("ADD", CNI_ARGS=args), json.dumps(conf).encode())
    pairs = [p for p in args.split(";") if p]
    if any("=" not in p or p.startswith("=") for p in pairs):
        assert run.error["code"] == 4
        return
    parsed = dict(p.split("=", 1) for p in pairs)  # last one wins
    name, ns = parsed.get("K8S_POD_NAME", ""), parsed.get("K8S_POD_NAMESPACE", "")
    agent_pod = ns == "meshnode-system" and name.startswith("meshnode-node-")
    assert run.rc == 0
    if not agent_pod:  # with or without Kubernetes identity, the agent decides
        assert live_agent.requests[before]["pod"] == {
            "name": name,
            "namespace": ns,
            "uid": parsed.get("K8S_POD_UID", ""),
            "infra_container_id": parsed.get("K8S_POD_INFRA_CONTAINER_ID", ""),
        }
    else:
        assert len(live_agent.requests) == before


@settings(FUZZ, max_examples=30)
@given(size=st.integers(1 << 20, 3 << 20), byte=st.sampled_from([b"{", b" ", b"a", b"\xff"]))
def test_huge_input_is_refused(size: int, byte: bytes) -> None:
    run = run_plugin(attachment_env("ADD"), byte * (size + 1))
    assert run.error["code"] == 7
    assert run.elapsed < 5
