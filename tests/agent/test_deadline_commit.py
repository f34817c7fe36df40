"""The commit point, in-process: an ADD whose rules went in only after the plugin's deadline
is rolled back before the pod is recorded. A real Enroller, real nftables in a real netns;
the backend is the real one, made slow by a wrapper around its apply."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.nodeagent.deadline import Deadline
from agent.nodeagent.enroll import Enroller
from agent.nodeagent.pods import PodStore
from agent.redirect import backend as engine
from agent.redirect.spec import RedirectSpec
from testing.lab import Node


class SlowApply:
    """The real backend, with `delay` seconds before each apply."""

    def __init__(self, impl: engine.RuleBackend, delay: float) -> None:
        self._impl, self._delay = impl, delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self._impl, name)

    def apply(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self._delay)
        return self._impl.apply(*args, **kwargs)


def test_rules_committed_after_the_deadline_are_rolled_back(tmp_path: Path,
                                                            pods: tuple[Node, Node]) -> None:
    pod, _ = pods
    cfg = AgentConfig(proxy_handoff=False, state_dir=str(tmp_path))
    store = PodStore(cfg.pods_dir)
    enroller = Enroller(cfg, store)
    real = enroller.impl
    enroller.impl = SlowApply(real, 0.4)  # type: ignore[assignment]
    req = {"container_id": "c1", "netns": pod.path, "ifname": "eth0", "ips": [pod.ip4],
           "pod": {"name": "web-0", "namespace": "default", "uid": "u1"}}
    reply = enroller.add(req, Deadline.after(200))
    assert not reply.ok and reply.code == 11
    assert "passed before the pod was enrolled; rolled back" in reply.detail
    assert store.all() == [] and list(cfg.pods_dir.glob("*.json")) == []
    assert not engine.read(pod.path, RedirectSpec(), real).rules
    # With time to spare, the same ADD commits.
    reply = enroller.add(req, Deadline.after(5000))
    assert reply.ok and reply.captured, reply
    assert engine.read(pod.path, RedirectSpec(), real).rules
    assert enroller.delete("c1").ok
