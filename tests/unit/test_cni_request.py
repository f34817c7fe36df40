"""The plugin's request, parsed once where it enters the agent, and the typed errors with
their CNI codes (docs/cni-protocol.md): the wire form is unchanged."""

from __future__ import annotations

from typing import Any

import pytest

from agent.nodeagent.deadline import DEFAULT_BUDGET_MS, Deadline
from agent.nodeagent.errors import (
    CniCode,
    InvalidConfig,
    InvalidEnvironment,
    PluginNotAvailable,
    Reply,
    TryAgain,
    fail,
)
from agent.nodeagent.request import Attachment, CniRequest, Command, PodIdentity

ADD = {"v": 1, "cmd": "ADD", "container_id": "c1", "netns": "/run/netns/a", "ifname": "eth0",
       "pod": {"name": "web-0", "namespace": "shop", "uid": "u1", "infra_container_id": "c1"},
       "ips": ["10.22.0.5", "fd00::5"],
       "config": {"name": "net", "cniVersion": "1.1.0", "capture": {"dns_capture": False}},
       "deadline_ms": 9987}


def test_an_add_in_the_wire_form_is_typed() -> None:
    req = CniRequest.parse(ADD)
    assert req == CniRequest(Command.ADD, container_id="c1", netns="/run/netns/a",
                             ifname="eth0", pod=PodIdentity("web-0", "shop", "u1"),
                             ips=("10.22.0.5", "fd00::5"), capture={"dns_capture": False},
                             deadline_ms=9987.0)
    assert str(req.pod) == "shop/web-0"


def test_an_old_plugin_without_a_deadline_gets_the_default() -> None:
    raw = {k: v for k, v in ADD.items() if k != "deadline_ms"}
    assert CniRequest.parse(raw).deadline_ms == DEFAULT_BUDGET_MS


def test_gc_attachments_under_either_key() -> None:
    req = CniRequest.parse({"cmd": "GC", "attachments": [
        {"container_id": "a", "ifname": "eth0"}, {"containerID": "b", "ifname": "net1"}]})
    assert req.attachments == (Attachment("a", "eth0"), Attachment("b", "net1"))


def test_status_needs_nothing_but_its_command() -> None:
    req = CniRequest.parse({"v": 1, "cmd": "STATUS", "config": {"name": "n"}})
    assert req.command is Command.STATUS and req.container_id == ""


def test_the_kubernetes_sources_form_is_an_add_without_cmd() -> None:
    raw = {"container_id": "k8s-u1", "netns": "/proc/7/ns/net", "ifname": "", "ips": ["10.0.0.1"],
           "pod": {"namespace": "shop", "name": "web", "uid": "u1"}}
    req = CniRequest.parse(raw, Command.ADD)
    assert (req.command, req.pod.uid, req.capture) == (Command.ADD, "u1", {})


@pytest.mark.parametrize(("raw", "msg"), [
    ([1, 2], "malformed request: not a JSON object"),
    ({"cmd": "ADDX"}, "unknown command 'ADDX'"),
    ({}, "unknown command '?'"),
    ({**ADD, "deadline_ms": "soon"},
     "malformed request: deadline_ms must be a number of milliseconds up to 600000"),
    ({**ADD, "deadline_ms": True},
     "malformed request: deadline_ms must be a number of milliseconds up to 600000"),
    ({**ADD, "container_id": ""}, "ADD needs container_id and netns"),
    ({**ADD, "netns": None}, "ADD needs container_id and netns"),
    ({**ADD, "container_id": 7}, "malformed request: container_id must be a string"),
    ({**ADD, "pod": "web-0"}, "malformed request: pod must be an object"),
    ({**ADD, "pod": {"name": 1}}, "malformed request: pod.name must be a string"),
    ({**ADD, "ips": "10.0.0.1"}, "malformed request: ips must be a list"),
    ({**ADD, "ips": [1]}, "malformed request: ips must be a list of strings"),
    ({**ADD, "config": {"capture": []}}, "malformed request: config.capture must be an object"),
    ({"cmd": "GC", "attachments": ["a"]}, "malformed request: attachments[0] must be an object"),
])
def test_a_bad_request_is_one_config_error(raw: Any, msg: str) -> None:
    with pytest.raises(InvalidConfig) as err:
        CniRequest.parse(raw)
    assert err.value.msg == msg
    assert err.value.code == CniCode.INVALID_CONFIG == 7 and not err.value.retryable


def test_the_deadline_is_checked_before_the_fields() -> None:
    # As before the request was typed: a bad budget is named even when more is wrong.
    with pytest.raises(InvalidConfig, match="deadline_ms"):
        CniRequest.parse({**ADD, "deadline_ms": "x", "container_id": ""})


@pytest.mark.parametrize(("err", "code", "retryable"), [
    (TryAgain("x"), 11, True),
    (InvalidConfig("x"), 7, False),
    (InvalidEnvironment("x"), 4, False),
    (PluginNotAvailable("x"), 50, True),
])
def test_errors_carry_their_cni_code_to_the_wire(err: Any, code: int, retryable: bool) -> None:
    reply = Reply.failed(err)
    assert reply.to_json() == {"ok": False, "code": code, "msg": "x", "details": ""}
    assert err.retryable is retryable and reply.retryable is retryable


def test_replies_on_the_wire_are_unchanged() -> None:
    assert Reply(ok=True, captured=True, detail="enrolled").to_json() == {
        "ok": True, "captured": True, "detail": "enrolled"}
    assert fail("no").to_json() == {"ok": False, "code": 11, "msg": "no", "details": ""}
    assert Reply(ok=False, detail="no").to_json()["code"] == 11
    assert not Reply(ok=True).retryable


def test_a_deadline_on_a_fake_clock() -> None:
    now = [100.0]
    d = Deadline.after(1000, clock=lambda: now[0])
    assert d.remaining() == pytest.approx(0.9)  # 10% margin
    now[0] += 0.9
    assert d.passed()
    assert Deadline.after(10_000, start=0.0, clock=lambda: 0.0).remaining() == pytest.approx(9.75)
