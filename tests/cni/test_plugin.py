"""meshnode-cni behaviour, run as the runtime runs it: a subprocess fed env and stdin, talking
to a fake agent on a real unix socket."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from typing import Any

import pytest

from .conftest import (
    CONTAINER_ID,
    LEGACY,
    NETNS,
    PLUGIN,
    SUPPORTED,
    FakeAgent,
    attachment_env,
    bridge_prev_result,
    check_streams,
    make_conf,
    run_plugin,
)

# --------------------------------------------------------------------------- VERSION


def test_version_reports_supported_versions() -> None:
    run = run_plugin({"CNI_COMMAND": "VERSION"})
    assert run.rc == 0
    assert run.json == {
        "cniVersion": "1.1.0",
        "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    }
    assert run.stderr == b""


def test_version_does_not_wait_for_stdin() -> None:
    # A runtime may leave stdin open for VERSION; the plugin must not block on it.
    r, w = os.pipe()
    try:
        start = time.monotonic()
        proc = subprocess.run([str(PLUGIN)], stdin=r, env={"CNI_COMMAND": "VERSION"},
                              capture_output=True, timeout=20, check=False)
        elapsed = time.monotonic() - start
    finally:
        os.close(r)
        os.close(w)
    check_streams(proc.returncode, proc.stdout, proc.stderr)
    assert proc.returncode == 0 and elapsed < 5
    assert json.loads(proc.stdout)["cniVersion"] == "1.1.0"


# --------------------------------------------------------------------------- ADD


@pytest.mark.parametrize("version", SUPPORTED)
def test_add_passes_prev_result_through_unchanged(agent: FakeAgent, version: str) -> None:
    prev = bridge_prev_result(version)
    run = run_plugin(attachment_env("ADD"), make_conf(version, agent.path, prev))
    assert run.rc == 0, run
    assert run.json == prev
    assert len(agent.requests) == 1
    assert any(r["msg"] == "pod captured" for r in run.logs)


def test_add_sends_pod_identity_ips_and_attachment(agent: FakeAgent) -> None:
    prev = bridge_prev_result("1.0.0")
    prev["ips"].append({"address": "FD00:10:22:0:0:0:0:5/64"})  # same IP, other spelling
    conf = make_conf("1.0.0", agent.path, prev, capture={"dns_capture": False})
    run = run_plugin(attachment_env("ADD"), conf)
    assert run.rc == 0, run
    # What is left of the default 10 s once connected: tested on its own below.
    assert 0 < agent.requests[0].pop("deadline_ms") <= 10_000
    assert agent.requests == [
        {
            "v": 1,
            "cmd": "ADD",
            "container_id": CONTAINER_ID,
            "netns": NETNS,
            "ifname": "eth0",
            "pod": {
                "name": "cart-7d9f8c6b5-x2x9z",
                "namespace": "shop",
                "uid": "0a1b2c3d-4e5f-6789-abcd-ef0123456789",
                "infra_container_id": CONTAINER_ID,
            },
            "ips": ["10.22.0.5", "fd00:10:22::5"],
            "config": {
                "name": "k8s-pod-network",
                "cniVersion": "1.0.0",
                "capture": {"dns_capture": False},
            },
        }
    ]


def test_add_with_no_ips_still_asks_agent(agent: FakeAgent) -> None:
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": NETNS}]}
    run = run_plugin(attachment_env("ADD"), make_conf("1.0.0", agent.path, prev))
    assert run.rc == 0 and run.json == prev
    assert agent.requests[0]["ips"] == []


@pytest.mark.parametrize(
    ("config_version", "prev_version"), [("1.0.0", "0.4.0"), ("0.4.0", "1.1.0"), ("1.1.0", "1.0.0")]
)
def test_add_relabels_prev_result_to_config_version(
    agent: FakeAgent, config_version: str, prev_version: str
) -> None:
    prev = bridge_prev_result(prev_version)
    run = run_plugin(attachment_env("ADD"), make_conf(config_version, agent.path, prev))
    assert run.rc == 0, run
    out = run.json
    assert out["cniVersion"] == config_version
    versions = [ip.get("version") for ip in out["ips"]]
    assert versions == (["4", "6"] if config_version in LEGACY else [None, None])
    for key in ("interfaces", "routes", "dns"):
        assert out[key] == prev[key]


def test_add_fails_closed_when_socket_absent(absent_socket: str) -> None:
    prev = bridge_prev_result("1.0.0")
    run = run_plugin(attachment_env("ADD"), make_conf("1.0.0", absent_socket, prev))
    err = run.error
    assert err["code"] == 11
    assert err["cniVersion"] == "1.0.0"
    assert "not running" in err["msg"] and absent_socket in err["msg"]
    assert "uncaptured" in err["msg"]
    assert "ips" not in run.json  # never the prevResult


def test_add_fails_closed_when_connection_refused(sockdir: str) -> None:
    path = os.path.join(sockdir, "stale.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)  # a socket file nobody listens on: what a crashed agent leaves behind
    try:
        run = run_plugin(
            attachment_env("ADD"), make_conf("1.0.0", path, bridge_prev_result("1.0.0"))
        )
    finally:
        stale.close()
    err = run.error
    assert err["code"] == 11
    assert "connection refused" in err["msg"]


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        ({"ok": False, "msg": "netns gone"}, 11),
        ({"ok": False, "code": 7, "msg": "bad capture options", "details": "dns_capture"}, 7),
        ({"ok": False, "code": True, "msg": "bool is not a code"}, 11),
        ({"ok": False, "code": -3}, 11),
    ],
)
def test_add_fails_closed_when_agent_refuses(
    agent: FakeAgent, reply: dict[str, Any], code: int
) -> None:
    agent.answer(reply)
    run = run_plugin(
        attachment_env("ADD"), make_conf("0.4.0", agent.path, bridge_prev_result("0.4.0"))
    )
    err = run.error
    assert err["code"] == code
    assert err["cniVersion"] == "0.4.0"
    assert "refused" in err["msg"]
    if isinstance(reply.get("msg"), str):
        assert reply["msg"] in err["msg"]
    assert err["details"] == reply.get("details", "")


def test_add_fails_closed_when_agent_times_out(agent: FakeAgent) -> None:
    agent.mode = "silent"
    conf = make_conf("1.0.0", agent.path, bridge_prev_result("1.0.0"), timeout_seconds=0.3)
    run = run_plugin(attachment_env("ADD"), conf)
    err = run.error
    assert err["code"] == 11
    assert "did not answer" in err["msg"]
    assert 0.25 < run.elapsed < 5
    assert len(agent.requests) == 1  # it did get the request


def test_add_sends_what_is_left_of_its_timeout_as_deadline_ms(agent: FakeAgent) -> None:
    conf = make_conf("1.0.0", agent.path, bridge_prev_result("1.0.0"), timeout_seconds=0.5)
    run = run_plugin(attachment_env("ADD"), conf)
    assert run.rc == 0, run
    budget = agent.requests[0]["deadline_ms"]
    # An int: the plugin's start-up is already behind it, so a little under 500 ms.
    assert isinstance(budget, int) and 300 < budget <= 500, budget


@pytest.mark.parametrize("command", ["CHECK", "DEL"])
def test_only_add_carries_a_deadline(agent: FakeAgent, command: str) -> None:
    conf = make_conf("1.0.0", agent.path, bridge_prev_result("1.0.0"))
    assert run_plugin(attachment_env(command), conf).rc == 0
    assert agent.requests[0]["cmd"] == command and "deadline_ms" not in agent.requests[0]


@pytest.mark.parametrize(
    "reply",
    [
        b"this is not json\n",
        b"[1, 2, 3]\n",
        b'{"ok": "yes"}\n',
        b'{"captured": true}\n',
        b"\n",
        b'{"ok": true',  # truncated, then EOF
        b'{"ok": NaN}\n',
        b"\xff\xfe\n",
        b"x" * 70000,  # over the reply limit, no newline
        b'{"ok": true, "x": ' + b"[" * 600 + b"]" * 600 + b"}\n",  # nested too deep
        b'{"ok": true}{"ok": true}\n',  # two documents on one line
        b'{"ok": false, "ok": true, "ok": "yes"}\n',  # the last of repeated keys counts
    ],
)
def test_add_fails_closed_on_malformed_reply(agent: FakeAgent, reply: bytes) -> None:
    agent.answer(reply)
    run = run_plugin(
        attachment_env("ADD"), make_conf("1.0.0", agent.path, bridge_prev_result("1.0.0"))
    )
    err = run.error
    assert err["code"] == 11
    assert "malformed" in err["msg"] or "without replying" in err["msg"]


def test_deadline_covers_a_trickling_reply(sockdir: str) -> None:
    """An agent (or an impostor) that keeps the reply coming one byte at a time cannot hold
    the ADD past timeout_seconds: the deadline is for the whole exchange, not per read."""
    path = os.path.join(sockdir, "trickle.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    stop = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        try:
            while not stop.wait(0.05):
                conn.sendall(b" ")  # whitespace: never a complete line
        except OSError:
            pass
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    conf = make_conf("1.0.0", path, bridge_prev_result("1.0.0"), timeout_seconds=0.5)
    try:
        run = run_plugin(attachment_env("ADD"), conf)
    finally:
        stop.set()
        thread.join(5)
        listener.close()
    assert run.error["code"] == 11
    assert "did not answer in time" in run.error["msg"]
    assert "no reply within 0.5s" in run.error["msg"]
    assert 0.45 < run.elapsed < 5


def test_agent_socket_is_a_path_even_with_a_leading_at(agent: FakeAgent, sockdir: str) -> None:
    # "@name" is an abstract socket to some APIs; here it is a file name, relative to the cwd.
    os.rename(agent.path, os.path.join(sockdir, "@cni.sock"))
    conf = make_conf("1.0.0", "@cni.sock", bridge_prev_result("1.0.0"))
    proc = subprocess.run([str(PLUGIN)], input=json.dumps(conf).encode(), cwd=sockdir,
                          env=attachment_env("ADD"), capture_output=True, timeout=20, check=False)
    check_streams(proc.returncode, proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stdout
    assert len(agent.requests) == 1


def test_add_fails_closed_when_agent_hangs_up(agent: FakeAgent) -> None:
    agent.mode = "close"
    run = run_plugin(
        attachment_env("ADD"), make_conf("1.0.0", agent.path, bridge_prev_result("1.0.0"))
    )
    assert run.error["code"] == 11
    assert "without replying" in run.error["msg"]


def test_add_accepts_reply_split_across_writes(sockdir: str) -> None:
    path = os.path.join(sockdir, "slow.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        for piece in (b'{"ok":', b" true", b"}\n"):
            conn.sendall(piece)
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    prev = bridge_prev_result("1.1.0")
    try:
        run = run_plugin(attachment_env("ADD"), make_conf("1.1.0", path, prev))
    finally:
        thread.join(5)
        listener.close()
    assert run.rc == 0 and run.json == prev


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        ("K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-5d78c9869d-abcde", {}),
        ("K8S_POD_NAMESPACE=legacy;K8S_POD_NAME=app-1", {"exclude_namespaces": ["legacy"]}),
        ("K8S_POD_NAMESPACE=meshnode-system;K8S_POD_NAME=meshnode-node-x7k2p", {}),
        (
            "K8S_POD_NAMESPACE=mesh;K8S_POD_NAME=agent-abc",
            {"agent_pod": {"namespace": "mesh", "name_prefix": "agent-"}},
        ),
    ],
)
def test_add_bypasses_without_contacting_agent(
    absent_socket: str, args: str, extra: dict[str, Any]
) -> None:
    # The socket does not exist: success proves the agent was never contacted.
    prev = bridge_prev_result("1.0.0")
    conf = make_conf("1.0.0", absent_socket, prev, **extra)
    run = run_plugin(attachment_env("ADD", CNI_ARGS=args), conf)
    assert run.rc == 0, run
    assert run.json == prev
    assert any(r["msg"] == "pod passed through without capture" for r in run.logs)


@pytest.mark.parametrize(
    "args",
    [
        "K8S_POD_NAMESPACE=default;K8S_POD_NAME=meshnode-node-x7k2p",  # right name, wrong ns
        "K8S_POD_NAMESPACE=meshnode-system;K8S_POD_NAME=debug-shell",  # right ns, wrong name
        "K8S_POD_NAMESPACE=kube-system-2;K8S_POD_NAME=x",  # exclusion is exact
        "",  # no Kubernetes identity (plain ctr): the agent decides, never a silent bypass
        "IgnoreUnknown=1",
    ],
)
def test_add_lookalikes_are_captured(agent: FakeAgent, args: str) -> None:
    run = run_plugin(
        attachment_env("ADD", CNI_ARGS=args),
        make_conf("1.0.0", agent.path, bridge_prev_result("1.0.0")),
    )
    assert run.rc == 0, run
    assert len(agent.requests) == 1


def test_add_without_prev_result_is_an_error(agent: FakeAgent) -> None:
    run = run_plugin(attachment_env("ADD"), make_conf("1.0.0", agent.path))
    assert run.error["code"] == 7
    assert "prevResult" in run.error["msg"]
    assert agent.requests == []


@pytest.mark.parametrize(
    "prev",
    [
        {"cniVersion": "1.0.0", "ips": "10.0.0.1/24"},
        {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.300/24"}]},
        {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/33"}]},
        {"cniVersion": "1.0.0", "ips": [{"gateway": "10.0.0.1"}]},
        {"cniVersion": "1.0.0", "ips": ["10.0.0.1/24"]},
        [1, 2],
    ],
)
def test_add_rejects_malformed_prev_result(agent: FakeAgent, prev: Any) -> None:
    run = run_plugin(attachment_env("ADD"), make_conf("1.0.0", agent.path, prev))
    assert run.error["code"] == 7
    assert agent.requests == []


def test_add_rejects_prev_result_of_unsupported_version(agent: FakeAgent) -> None:
    prev = {"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.5/24"}}
    run = run_plugin(attachment_env("ADD"), make_conf("1.0.0", agent.path, prev))
    assert run.error["code"] == 1
    assert agent.requests == []


# --------------------------------------------------------------------------- DEL


def test_del_succeeds_with_agent_down(absent_socket: str) -> None:
    env = attachment_env("DEL", CNI_NETNS=None)
    run = run_plugin(env, make_conf("1.0.0", absent_socket))
    assert run.rc == 0 and run.stdout == b""
    assert any(r["level"] == "warn" for r in run.logs)


def test_del_tells_agent(agent: FakeAgent) -> None:
    prev = bridge_prev_result("0.4.0")
    run = run_plugin(attachment_env("DEL", CNI_NETNS=""), make_conf("0.4.0", agent.path, prev))
    assert run.rc == 0 and run.stdout == b""
    [request] = agent.requests
    assert request["cmd"] == "DEL"
    assert request["container_id"] == CONTAINER_ID
    assert request["netns"] == ""
    assert request["ips"] == ["10.22.0.5", "fd00:10:22::5"]


@pytest.mark.parametrize("mode", ["silent", "garbage", "refuse"])
def test_del_succeeds_whatever_the_agent_does(agent: FakeAgent, mode: str) -> None:
    if mode == "silent":
        agent.mode = "silent"
    else:
        agent.answer(b"%%%\n" if mode == "garbage" else {"ok": False, "code": 3, "msg": "unknown"})
    conf = make_conf("1.0.0", agent.path, timeout_seconds=0.3)
    run = run_plugin(attachment_env("DEL"), conf)
    assert run.rc == 0 and run.stdout == b""
    assert run.elapsed < 5


def test_del_is_idempotent(agent: FakeAgent) -> None:
    for _ in range(3):
        run = run_plugin(attachment_env("DEL"), make_conf("1.1.0", agent.path))
        assert run.rc == 0 and run.stdout == b""
    assert [r["cmd"] for r in agent.requests] == ["DEL"] * 3


def test_del_with_broken_prev_result_still_tells_agent(agent: FakeAgent) -> None:
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "nonsense"}]}
    run = run_plugin(attachment_env("DEL"), make_conf("1.0.0", agent.path, prev))
    assert run.rc == 0
    assert agent.requests[0]["ips"] == []


def test_del_of_excluded_pod_skips_agent(agent: FakeAgent) -> None:
    env = attachment_env("DEL", CNI_ARGS="K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=x")
    run = run_plugin(env, make_conf("1.0.0", agent.path))
    assert run.rc == 0 and agent.requests == []


# --------------------------------------------------------------------------- CHECK


def test_check_ok(agent: FakeAgent) -> None:
    prev = bridge_prev_result("1.0.0")
    run = run_plugin(attachment_env("CHECK"), make_conf("1.0.0", agent.path, prev))
    assert run.rc == 0 and run.stdout == b""
    assert agent.requests[0]["cmd"] == "CHECK"
    assert agent.requests[0]["ips"] == ["10.22.0.5", "fd00:10:22::5"]


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        ({"ok": False, "msg": "redirect chain missing"}, 100),
        ({"ok": False, "code": 11, "msg": "agent still syncing"}, 11),
    ],
)
def test_check_reports_drift(agent: FakeAgent, reply: dict[str, Any], code: int) -> None:
    agent.answer(reply)
    run = run_plugin(
        attachment_env("CHECK"), make_conf("1.0.0", agent.path, bridge_prev_result("1.0.0"))
    )
    assert run.error["code"] == code
    assert reply["msg"] in run.error["msg"]


def test_check_with_agent_absent_is_an_error(absent_socket: str) -> None:
    run = run_plugin(
        attachment_env("CHECK"), make_conf("1.0.0", absent_socket, bridge_prev_result("1.0.0"))
    )
    assert run.error["code"] == 11
    assert "not running" in run.error["msg"]


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1"])
def test_check_needs_spec_0_4(agent: FakeAgent, version: str) -> None:
    run = run_plugin(
        attachment_env("CHECK"), make_conf(version, agent.path, bridge_prev_result(version))
    )
    assert run.error["code"] == 1
    assert run.error["cniVersion"] == version
    assert agent.requests == []


def test_check_without_prev_result_is_an_error(agent: FakeAgent) -> None:
    run = run_plugin(attachment_env("CHECK"), make_conf("1.0.0", agent.path))
    assert run.error["code"] == 7


# --------------------------------------------------------------------------- STATUS


def test_status_ready(agent: FakeAgent) -> None:
    run = run_plugin(
        {"CNI_COMMAND": "STATUS", "CNI_PATH": "/opt/cni/bin"}, make_conf("1.1.0", agent.path)
    )
    assert run.rc == 0 and run.stdout == b""
    assert agent.requests == [
        {
            "v": 1,
            "cmd": "STATUS",
            "config": {"name": "k8s-pod-network", "cniVersion": "1.1.0", "capture": {}},
        }
    ]


def test_status_agent_absent_is_code_50(absent_socket: str) -> None:
    run = run_plugin({"CNI_COMMAND": "STATUS"}, make_conf("1.1.0", absent_socket))
    assert run.error["code"] == 50


@pytest.mark.parametrize(("agent_code", "code"), [(None, 50), (51, 51), (7, 50), (50, 50)])
def test_status_agent_not_ready(agent: FakeAgent, agent_code: int | None, code: int) -> None:
    reply: dict[str, Any] = {"ok": False, "msg": "ztunnel not connected"}
    if agent_code is not None:
        reply["code"] = agent_code
    agent.answer(reply)
    run = run_plugin({"CNI_COMMAND": "STATUS"}, make_conf("1.1.0", agent.path))
    assert run.error["code"] == code
    assert "ztunnel not connected" in run.error["msg"]


def test_status_agent_hung_is_code_50_quickly(agent: FakeAgent) -> None:
    agent.mode = "silent"
    run = run_plugin({"CNI_COMMAND": "STATUS"}, make_conf("1.1.0", agent.path))
    assert run.error["code"] == 50
    assert run.elapsed < 5  # STATUS uses the short timeout, not timeout_seconds (10 s)


def test_status_needs_spec_1_1(agent: FakeAgent) -> None:
    run = run_plugin({"CNI_COMMAND": "STATUS"}, make_conf("1.0.0", agent.path))
    assert run.error["code"] == 1
    assert agent.requests == []


# --------------------------------------------------------------------------- GC


def gc_conf(version: str, socket_path: str, key: str, attachments: list[Any]) -> dict[str, Any]:
    conf = make_conf(version, socket_path)
    conf[key] = attachments
    return conf


def test_gc_forwards_valid_attachments(agent: FakeAgent) -> None:
    valid = [
        {"containerID": CONTAINER_ID, "ifname": "eth0"},
        {"containerID": "abc", "ifname": "net1"},
    ]
    conf = gc_conf("1.1.0", agent.path, "cni.dev/valid-attachments", valid)
    run = run_plugin({"CNI_COMMAND": "GC", "CNI_PATH": "/opt/cni/bin"}, conf)
    assert run.rc == 0 and run.stdout == b""
    [request] = agent.requests
    assert request["cmd"] == "GC"
    assert request["attachments"] == [
        {"container_id": CONTAINER_ID, "ifname": "eth0"},
        {"container_id": "abc", "ifname": "net1"},
    ]


def test_gc_accepts_legacy_key_and_empty_list(agent: FakeAgent) -> None:
    conf = gc_conf("1.1.0", agent.path, "cni.dev/attachments", [])
    run = run_plugin({"CNI_COMMAND": "GC"}, conf)
    assert run.rc == 0
    assert agent.requests[0]["attachments"] == []


def test_gc_without_attachment_list_is_refused(agent: FakeAgent) -> None:
    # Sending [] instead would tell the agent to release every pod on the node.
    run = run_plugin({"CNI_COMMAND": "GC"}, make_conf("1.1.0", agent.path))
    assert run.error["code"] == 7
    assert agent.requests == []


def test_gc_agent_absent_is_an_error(absent_socket: str) -> None:
    conf = gc_conf("1.1.0", absent_socket, "cni.dev/valid-attachments", [])
    run = run_plugin({"CNI_COMMAND": "GC"}, conf)
    assert run.error["code"] == 11


def test_gc_agent_failure(agent: FakeAgent) -> None:
    agent.answer({"ok": False, "msg": "cannot list netns"})
    conf = gc_conf("1.1.0", agent.path, "cni.dev/valid-attachments", [])
    run = run_plugin({"CNI_COMMAND": "GC"}, conf)
    assert run.error["code"] == 11
    assert "cannot list netns" in run.error["msg"]


def test_gc_needs_spec_1_1(agent: FakeAgent) -> None:
    conf = gc_conf("1.0.0", agent.path, "cni.dev/valid-attachments", [])
    run = run_plugin({"CNI_COMMAND": "GC"}, conf)
    assert run.error["code"] == 1


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0", "1.2.0", "2.0.0", "1.0", "", "latest"])
@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_unsupported_cni_version(agent: FakeAgent, version: str, command: str) -> None:
    run = run_plugin(
        attachment_env(command), make_conf(version, agent.path, bridge_prev_result("1.0.0"))
    )
    err = run.error
    assert err["code"] == 1
    assert err["cniVersion"] == "1.1.0"  # the config's version is unusable: ours
    assert agent.requests == []


@pytest.mark.parametrize("version", [None, 1.0, ["1.0.0"]])
def test_missing_or_non_string_cni_version(agent: FakeAgent, version: Any) -> None:
    conf = make_conf("1.0.0", agent.path, bridge_prev_result("1.0.0"))
    conf["cniVersion"] = version
    run = run_plugin(attachment_env("ADD"), conf)
    assert run.error["code"] == 7


@pytest.mark.parametrize(
    ("stdin", "code"),
    [
        (b"", 6),
        (b"{", 6),
        (b"{'cniVersion': '1.0.0'}", 6),
        (b'{"cniVersion": "1.0.0", "x": NaN}', 6),
        (b'{"cniVersion": "1.0.0", "x": 1e400}', 6),
        (b"\xff\xfe{}", 6),
        (b"[" * 100000, 6),
        (b"[]", 7),
        (b'"1.0.0"', 7),
        (b"null", 7),
    ],
)
def test_undecodable_config(stdin: bytes, code: int) -> None:
    run = run_plugin(attachment_env("ADD"), stdin)
    assert run.error["code"] == code


def test_huge_stdin_is_refused_quickly() -> None:
    blob = b'{"cniVersion": "1.0.0", "pad": "' + b"a" * (2 << 20) + b'"}'
    run = run_plugin(attachment_env("ADD"), blob)
    assert run.error["code"] == 7
    assert "exceeds" in run.error["msg"]
    assert run.elapsed < 5


def test_stdin_left_open_times_out() -> None:
    # The shipped binary's own 30 s limit: no test-only knob in the plugin.
    r, w = os.pipe()
    try:
        os.write(w, b'{"cniVersion": "1.0.0"')  # partial config, writer never closes
        start = time.monotonic()
        proc = subprocess.run([str(PLUGIN)], stdin=r, env=attachment_env("ADD"),
                              capture_output=True, timeout=60, check=False)
        elapsed = time.monotonic() - start
    finally:
        os.close(r)
        os.close(w)
    check_streams(proc.returncode, proc.stdout, proc.stderr)
    err = json.loads(proc.stdout)
    assert err["code"] == 6
    assert "timed out" in err["msg"] and err["details"] == "stdin was not closed within 30 seconds"
    assert 29 < elapsed < 45


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"CNI_CONTAINERID": None}, "CNI_CONTAINERID"),
        ({"CNI_NETNS": None}, "CNI_NETNS"),
        ({"CNI_IFNAME": None}, "CNI_IFNAME"),
        ({"CNI_IFNAME": "a-very-long-ifname0"}, "CNI_IFNAME"),
        ({"CNI_IFNAME": "eth/0"}, "CNI_IFNAME"),
        ({"CNI_IFNAME": ".."}, "CNI_IFNAME"),
        ({"CNI_CONTAINERID": "-leading-dash"}, "CNI_CONTAINERID"),
        ({"CNI_CONTAINERID": "has space"}, "CNI_CONTAINERID"),
        ({"CNI_ARGS": "K8S_POD_NAME"}, "CNI_ARGS"),
        ({"CNI_ARGS": "=value"}, "CNI_ARGS"),
        ({"CNI_COMMAND": "ADDD"}, "CNI_COMMAND"),
        ({"CNI_COMMAND": None}, "CNI_COMMAND"),
    ],
)
def test_invalid_environment(agent: FakeAgent, overrides: dict[str, Any], fragment: str) -> None:
    run = run_plugin(
        attachment_env("ADD", **overrides),
        make_conf("1.0.0", agent.path, bridge_prev_result("1.0.0")),
    )
    assert run.error["code"] == 4
    assert fragment in run.error["msg"]
    assert agent.requests == []


def test_del_does_not_need_netns_or_prev_result(agent: FakeAgent) -> None:
    run = run_plugin(attachment_env("DEL", CNI_NETNS=None), make_conf("1.0.0", agent.path))
    assert run.rc == 0
    assert agent.requests[0]["netns"] == ""


def test_cni_args_edge_cases(agent: FakeAgent) -> None:
    args = "K8S_POD_NAMESPACE=shop;;K8S_POD_NAME=a=b;K8S_POD_NAME=web-0;FOO=;"
    run = run_plugin(
        attachment_env("ADD", CNI_ARGS=args),
        make_conf("1.0.0", agent.path, bridge_prev_result("1.0.0")),
    )
    assert run.rc == 0, run
    pod = agent.requests[0]["pod"]
    assert pod == {"name": "web-0", "namespace": "shop", "uid": "", "infra_container_id": ""}


@pytest.mark.parametrize(
    "extra",
    [
        {"timeout_seconds": "10"},
        {"timeout_seconds": 0},
        {"timeout_seconds": -1},
        {"timeout_seconds": True},
        {"timeout_seconds": 100000},
        {"agent_socket": ""},
        {"agent_socket": "/run/" + "x" * 120},
        {"agent_socket": 5},
        {"exclude_namespaces": "kube-system"},
        {"exclude_namespaces": [1]},
        {"agent_pod": {"namespace": "meshnode-system", "name_prefix": ""}},
        {"agent_pod": {"namespace": "meshnode-system"}},
        {"agent_pod": "meshnode-node-"},
        {"capture": []},
        {"log_file": False},
        {"name": 7},
    ],
)
def test_invalid_plugin_config(agent: FakeAgent, extra: dict[str, Any]) -> None:
    conf = make_conf("1.0.0", agent.path, bridge_prev_result("1.0.0"))
    conf.update(extra)
    run = run_plugin(attachment_env("ADD"), conf)
    assert run.error["code"] == 7
    assert agent.requests == []


# --------------------------------------------------------------------------- logging


def test_logs_go_to_stderr_and_log_file(agent: FakeAgent, sockdir: str) -> None:
    log_file = os.path.join(sockdir, "plugin.log")
    prev = bridge_prev_result("1.0.0")
    run = run_plugin(attachment_env("ADD"), make_conf("1.0.0", agent.path, prev, log_file=log_file))
    assert run.rc == 0 and run.json == prev  # stdout: the result and nothing else
    with open(log_file, "rb") as fh:
        lines = [json.loads(line) for line in fh]
    assert lines == run.logs
    [record] = lines
    assert record["msg"] == "pod captured"
    assert record["pod"] == "shop/cart-7d9f8c6b5-x2x9z"
    assert record["container_id"] == CONTAINER_ID


def test_unwritable_log_file_is_not_fatal(agent: FakeAgent) -> None:
    prev = bridge_prev_result("1.0.0")
    conf = make_conf("1.0.0", agent.path, prev, log_file="/nonexistent-dir/plugin.log")
    run = run_plugin(attachment_env("ADD"), conf)
    assert run.rc == 0 and run.json == prev


def test_log_file_that_is_a_fifo_does_not_block(agent: FakeAgent, sockdir: str) -> None:
    # Nobody reads the FIFO: opening it for writing would block forever.
    fifo = os.path.join(sockdir, "plugin.log")
    os.mkfifo(fifo)
    prev = bridge_prev_result("1.0.0")
    run = run_plugin(attachment_env("ADD"), make_conf("1.0.0", agent.path, prev, log_file=fifo))
    assert run.rc == 0 and run.json == prev
    assert run.elapsed < 5
    assert [r["msg"] for r in run.logs] == ["pod captured"]  # stderr still has the record


def test_closed_stderr_and_stdout_keep_the_exchange_clean(agent: FakeAgent) -> None:
    """With fds 1 and 2 closed, the agent's socket must not become one of them (and receive
    the plugin's output or logs); the agent sees one well-formed request."""
    conf = make_conf("1.0.0", agent.path, bridge_prev_result("1.0.0"))
    proc = subprocess.run(["/bin/sh", "-c", 'exec "$0" >&- 2>&-', str(PLUGIN)],
                          input=json.dumps(conf).encode(), env=attachment_env("ADD"),
                          capture_output=True, timeout=20, check=False)
    assert proc.returncode == 0
    assert proc.stdout == b"" and proc.stderr == b""
    [request] = agent.requests
    assert request["cmd"] == "ADD" and request["container_id"] == CONTAINER_ID


def test_closed_stdout_does_not_crash() -> None:
    r, w = os.pipe()
    os.close(r)  # the reader is gone: every write gets EPIPE
    try:
        proc = subprocess.run(
            [str(PLUGIN)],
            env={"CNI_COMMAND": "VERSION"},
            stdout=w,
            stderr=subprocess.PIPE,
            timeout=10,
            check=False,
        )
    finally:
        os.close(w)
    assert proc.returncode == 0
    assert proc.stderr == b""  # no "Exception ignored ... BrokenPipeError"


def test_closed_stdin_is_a_decode_error() -> None:
    proc = subprocess.run(
        ["/bin/sh", "-c", 'exec "$0" <&-', str(PLUGIN)],
        env=attachment_env("ADD"),
        capture_output=True,
        timeout=10,
        check=False,
    )
    check_streams(proc.returncode, proc.stdout, proc.stderr)
    assert json.loads(proc.stdout)["code"] == 6
