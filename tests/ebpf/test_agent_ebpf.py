"""The agent with `capture.backend: ebpf`, driven by the real plugin: enroll, SIGKILL and
restart (the pinned programs and maps carry on and are taken over), and the fallback."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.redirect import backend as engine
from agent.redirect.ebpf.loader import Loader, netns_cookie
from agent.redirect.spec import RedirectSpec
from testing.agent_harness import AgentProc, cni
from testing.lab import Node
from tests.ebpf.netcheck import redirected

pytestmark = pytest.mark.kernel


@pytest.fixture
def pin_dir(bpffs: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    path = os.path.join(bpffs, f"agent-{os.getpid()}")
    monkeypatch.setenv("MESHNODE_BPF_PIN_DIR", path)  # the agent (a child) inherits it
    try:
        yield path
    finally:
        if os.path.isdir(path):
            Loader(pin_dir=path).destroy()


def link_ids(pin_dir: str) -> list[object]:
    ld = Loader(pin_dir=pin_dir)
    try:
        st = ld.status()
        return [p.get("link_id") for p in st["programs"]] + \
               [n["link_id"] for n in st["netns_links"]]
    finally:
        ld.close()


def test_sigkilled_agent_leaves_capture_in_place_and_takes_it_over(
        tmp_path: Path, pods: tuple[Node, Node], pin_dir: str) -> None:
    pod, server = pods
    agent = AgentProc(tmp_path, backend="ebpf", drift_interval=3600).start()
    try:
        assert cni("ADD", agent.socket, pod.path, "c1", [pod.ip4]).code == 0
        impl = engine.make_backend("ebpf")
        assert engine.diff(pod.path, RedirectSpec(), impl).in_sync
        before = link_ids(pin_dir)
        agent.stop(signal.SIGKILL)  # no goodbye: nothing detached
        assert redirected(pod, server, server.ip4, 80), "capture dropped with the agent"
        agent.start()
        assert link_ids(pin_dir) == before, "a restart must not re-attach (or duplicate)"
        assert [p["state"] for p in agent.pods()] == ["redirected"]
        assert engine.diff(pod.path, RedirectSpec(), impl).in_sync
        assert redirected(pod, server, server.ip4, 80)
        assert cni("DEL", agent.socket, pod.path, "c1", [pod.ip4]).code == 0
        assert not redirected(pod, server, server.ip4, 80)
        ld = Loader(pin_dir=pin_dir)
        try:
            assert ld.read_cookie(netns_cookie(pod.path)) is None
            assert ld.map_counts()["pods"] == 0 and ld.map_counts()["pod_ips"] == 0
        finally:
            ld.close()
    finally:
        agent.stop()


def test_load_failure_falls_back_to_iptables_and_says_so(
        tmp_path: Path, pods: tuple[Node, Node], monkeypatch: pytest.MonkeyPatch) -> None:
    pod, _ = pods
    # A pin dir that is not on a bpffs: the eBPF backend cannot load.
    (tmp_path / "not-bpffs").mkdir()
    monkeypatch.setenv("MESHNODE_BPF_PIN_DIR", str(tmp_path / "not-bpffs" / "meshnode"))
    agent = AgentProc(tmp_path / "a", backend="ebpf", fallback="iptables").start()
    try:
        assert "ebpf_unavailable_falling_back" in agent.log.read_text()
        assert agent.metric("meshnode_backend_fallback_total") == 1
        assert cni("ADD", agent.socket, pod.path, "c1", [pod.ip4]).code == 0
        [rec] = agent.pods()
        assert rec["backend"].startswith("iptables")
        assert engine.diff(pod.path, RedirectSpec(), engine.make_backend("iptables")).in_sync
    finally:
        agent.stop()


def test_load_failure_without_fallback_is_one_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "not-bpffs").mkdir()
    monkeypatch.setenv("MESHNODE_BPF_PIN_DIR", str(tmp_path / "not-bpffs" / "meshnode"))
    agent = AgentProc(tmp_path, backend="ebpf")
    with pytest.raises(RuntimeError, match="agent exited"):
        agent.start()
    log = agent.log.read_text()
    assert "error: capture.backend ebpf: bpffs is not mounted" in log, log
    assert "Traceback" not in log
