"""The Enroller's state logic with fakes for what touches the kernel or the proxy: no root,
no netns, no sleeping (a fake clock drives the plugin's deadline). As ztunnel's inpod
statemanager tests do: every rule about enrollment, checked in milliseconds.

The real Enroller on real netns and a real proxy stays covered by tests/agent and tests/k8s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from agent.config import AgentConfig, CaptureConfig, Fallback
from agent.nodeagent.backend import make_capture_backend
from agent.nodeagent.deadline import Deadline
from agent.nodeagent.deps import HostNetns
from agent.nodeagent.enroll import Enroller
from agent.nodeagent.errors import CniCode
from agent.nodeagent.pods import PodRecord, PodState, PodStore
from agent.nodeagent.request import Attachment, CniRequest, Command, PodIdentity
from agent.redirect import backend as engine
from agent.redirect.errors import BackendUnavailable, RedirectError
from agent.redirect.rules import Drift
from agent.redirect.spec import RedirectSpec
from agent.zds.server import ZdsError
from core.config import ConfigError

POD_NS = "/run/netns/pod-a"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FakeBackend:
    """A RuleBackend token: the fake engine does the per-netns work."""

    name = "fake"

    def __init__(self, unavailable: str = "") -> None:
        self.unavailable = unavailable
        self.prepared = 0
        self.closed = 0

    def prepare(self) -> None:
        self.prepared += 1
        if self.unavailable:
            raise BackendUnavailable(self.unavailable)

    def close(self) -> None:
        self.closed += 1

    def apply(self, label: str, spec: RedirectSpec) -> None:
        raise AssertionError("the Enroller goes through the engine")

    read = remove = expected = apply  # type: ignore[assignment]


class FakeEngine:
    """The rules each netns holds, as the redirect engine would leave them."""

    def __init__(self, events: list[tuple[str, str]]) -> None:
        self.events = events
        self.rules: dict[str, RedirectSpec] = {}
        self.tampered: set[str] = set()  # someone edited our rules by hand
        self.fail_apply = ""
        self.on_apply: Callable[[str], None] | None = None

    def apply(self, netns: str | int, spec: RedirectSpec, impl: Any) -> None:
        self.events.append(("apply", str(netns)))
        if self.on_apply is not None:
            self.on_apply(str(netns))
        if self.fail_apply:
            raise RedirectError(str(netns), "apply rules", self.fail_apply)
        self.rules[str(netns)] = spec
        self.tampered.discard(str(netns))

    def remove(self, netns: str | int, spec: RedirectSpec, impl: Any) -> list[str]:
        self.events.append(("remove", str(netns)))
        return ["our chains"] if self.rules.pop(str(netns), None) else []

    def diff(self, netns: str | int, spec: RedirectSpec, impl: Any) -> Drift:
        self.events.append(("diff", str(netns)))
        drift = Drift()
        if str(netns) not in self.rules:
            drift.missing.append("chain ipv4 nat MESHNODE_OUTPUT")
        elif self.rules[str(netns)] != spec or str(netns) in self.tampered:
            drift.unexpected.append("ipv4 nat MESHNODE_OUTPUT: -j ACCEPT")
        return drift


class FakeNetns:
    def __init__(self) -> None:
        self.inodes: dict[str, int] = {}
        self.host: set[str] = set()
        self.v6: set[str] = set()

    def inode_of(self, path: str) -> int | None:
        return self.inodes.get(path)

    def forbidden(self, path: str) -> str | None:
        return "the host's" if path in self.host else None

    def locate(self, path: str, inode: int, ips: list[str]) -> str | None:
        if self.inodes.get(path) == inode:
            return path
        return next((p for p, i in self.inodes.items() if i == inode), None)

    def has_ipv6(self, path: str) -> bool:
        return path in self.v6


class FakeHandoff:
    def __init__(self, events: list[tuple[str, str]]) -> None:
        self.events = events
        self.fail: list[str] = []  # one ZdsError per entry, then success
        self.budgets: list[float | None] = []
        self.on_add: Callable[[], None] | None = None

    def ready(self) -> bool:
        return True

    def add(self, rec: PodRecord, budget: float | None = None) -> None:
        self.events.append(("handoff.add", rec.container_id))
        self.budgets.append(budget)
        if self.on_add is not None:
            self.on_add()
        if self.fail:
            raise ZdsError(self.fail.pop(0))

    def delete(self, rec: PodRecord) -> None:
        self.events.append(("handoff.delete", rec.container_id))


class FakeWatch:
    def __init__(self) -> None:
        self.watched: dict[str, str] = {}

    def watch(self, cid: str, netns: str) -> bool:
        self.watched[cid] = netns
        return True

    def unwatch(self, cid: str) -> None:
        self.watched.pop(cid, None)


class Policy:
    def __init__(self, verdict: bool | None) -> None:
        self.verdict = verdict

    def selects(self, namespace: str, name: str) -> bool | None:
        return self.verdict


class World:
    """An Enroller with every injected part faked, and the fakes to look at."""

    def __init__(self, tmp: Path, handoff: bool = True, **capture: Any) -> None:
        self.events: list[tuple[str, str]] = []
        self.clock = Clock()
        self.engine = FakeEngine(self.events)
        self.netns = FakeNetns()
        self.netns.inodes[POD_NS] = 4026532001
        self.handoff = FakeHandoff(self.events) if handoff else None
        self.backend = FakeBackend()
        self.cfg = AgentConfig(state_dir=str(tmp), capture=CaptureConfig(**capture))
        self.store = PodStore(self.cfg.pods_dir)
        self.enroller = Enroller(self.cfg, self.store, self.handoff, backend=self.backend,
                                 redirect=self.engine, netns=self.netns)
        self.watch = FakeWatch()
        self.enroller.watch = self.watch

    def deadline(self, budget_ms: float) -> Deadline:
        return Deadline.after(budget_ms, clock=self.clock)

    def state(self, cid: str = "c1") -> PodState | None:
        rec = self.store.get(cid)
        return None if rec is None else rec.state


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    yield World(tmp_path)


def add_req(cid: str = "c1", netns: str = POD_NS, namespace: str = "default",
            name: str = "web-0", ips: tuple[str, ...] = ("10.22.0.5",),
            capture: dict[str, Any] | None = None) -> dict[str, Any]:
    """An ADD in the plugin's wire form (docs/cni-protocol.md)."""
    return {"v": 1, "cmd": "ADD", "container_id": cid, "netns": netns, "ifname": "eth0",
            "pod": {"name": name, "namespace": namespace, "uid": f"uid-{cid}"},
            "ips": list(ips), "config": {"name": "n", "cniVersion": "1.1.0",
                                         "capture": capture or {}}}


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- ADD --------------------------------------------------------------------------------


def test_add_goes_pending_then_redirected_then_enrolled(w: World) -> None:
    seen: list[PodState | None] = []
    w.engine.on_apply = lambda _ns: seen.append(w.state())
    w.handoff.on_add = lambda: seen.append(w.state())  # type: ignore[union-attr]
    reply = w.enroller.add(add_req())
    assert reply.ok and reply.captured and reply.detail == "enrolled", reply
    # recorded pending before any rule, redirected before the proxy is asked
    assert seen == [PodState.PENDING, PodState.REDIRECTED]
    assert w.events == [("apply", POD_NS), ("handoff.add", "c1")]
    rec = w.store.get("c1")
    assert rec is not None and rec.state is PodState.ENROLLED
    assert (rec.netns_inode, rec.uid, rec.ips, rec.backend) == (
        4026532001, "uid-c1", ["10.22.0.5"], "fake")
    assert w.watch.watched == {"c1": POD_NS}
    # persisted: a restarted agent reads the same record
    assert PodStore(w.cfg.pods_dir).get("c1") == rec


def test_add_without_a_proxy_hand_off_stays_redirected(tmp_path: Path) -> None:
    w = World(tmp_path, handoff=False)
    reply = w.enroller.add(add_req())
    assert reply.ok and reply.captured and reply.detail == "redirected"
    assert w.state() is PodState.REDIRECTED


def test_a_typed_request_is_enrolled_as_the_wire_form_is(w: World) -> None:
    req = CniRequest(Command.ADD, container_id="c1", netns=POD_NS, ifname="eth0",
                     pod=PodIdentity("web-0", "default", "u1"), ips=("10.22.0.5",))
    assert w.enroller.add(req).captured
    rec = w.store.get("c1")
    assert rec is not None and (rec.name, rec.namespace, rec.uid) == ("web-0", "default", "u1")


def test_redirection_failure_leaves_nothing_and_is_retryable(w: World) -> None:
    w.engine.fail_apply = "nft exited 1: Error: Could not process rule"
    reply = w.enroller.add(add_req())
    assert not reply.ok and reply.code == CniCode.TRY_AGAIN and reply.retryable
    assert reply.detail.startswith(f"redirection failed: netns {POD_NS}: apply rules: nft")
    assert w.store.all() == [] and ("handoff.add", "c1") not in w.events
    assert w.watch.watched == {}


def test_proxy_refusal_takes_the_rules_back_out(w: World) -> None:
    w.handoff.fail = ["no node proxy is connected"]  # type: ignore[union-attr]
    reply = w.enroller.add(add_req())
    assert not reply.ok and reply.code == 11 and reply.retryable
    assert reply.detail == "the node proxy did not take the pod: no node proxy is connected"
    # the proxy is told to let go before the rules are removed: never captured-but-unserved
    assert w.events == [("apply", POD_NS), ("handoff.add", "c1"), ("handoff.delete", "c1"),
                        ("remove", POD_NS)]
    assert w.engine.rules == {} and w.store.all() == []


def test_the_runtimes_retry_succeeds_once_the_proxy_takes_it(w: World) -> None:
    w.handoff.fail = ["no ack within 1.0s"]  # type: ignore[union-attr]
    first = w.enroller.add(add_req())
    assert not first.ok and first.retryable
    second = w.enroller.add(add_req())
    assert second.ok and second.detail == "enrolled"
    assert w.state() is PodState.ENROLLED and POD_NS in w.engine.rules


def test_add_twice_is_one_pod(w: World) -> None:
    assert w.enroller.add(add_req()).captured
    assert w.enroller.add(add_req()).captured
    assert [r.container_id for r in w.store.all()] == ["c1"]
    assert len(w.engine.rules) == 1


def test_a_deadline_already_passed_changes_nothing(w: World) -> None:
    before = metric("meshnode_add_deadline_exceeded_total", stage="before_start")
    reply = w.enroller.add(add_req(), w.deadline(0))
    assert not reply.ok and reply.code == 11
    assert reply.detail == ("the plugin's deadline (0 ms) passed before the agent could "
                            "start; nothing was changed")
    assert w.events == [] and w.store.all() == []
    assert metric("meshnode_add_deadline_exceeded_total", stage="before_start") == before + 1


def test_the_hand_off_gets_what_is_left_of_the_budget(w: World) -> None:
    w.engine.on_apply = lambda _ns: w.clock.advance(0.3)
    assert w.enroller.add(add_req(), w.deadline(1000)).captured
    # 1000 ms less the margin (100 ms) less the 300 ms the rules took
    [budget] = w.handoff.budgets  # type: ignore[union-attr]
    assert budget == pytest.approx(0.6)


def test_past_the_deadline_at_the_commit_point_the_add_is_rolled_back(w: World) -> None:
    before = metric("meshnode_add_deadline_exceeded_total", stage="rolled_back")
    w.handoff.on_add = lambda: w.clock.advance(2.0)  # type: ignore[union-attr]
    reply = w.enroller.add(add_req(), w.deadline(1000))
    assert not reply.ok and reply.code == 11
    assert reply.detail == ("the plugin's deadline (1000 ms) passed before the pod was "
                            "enrolled; rolled back")
    # release order: the proxy lets go, then the rules, then the record
    assert w.events[-2:] == [("handoff.delete", "c1"), ("remove", POD_NS)]
    assert w.engine.rules == {} and w.store.all() == [] and w.watch.watched == {}
    assert metric("meshnode_add_deadline_exceeded_total", stage="rolled_back") == before + 1


def test_the_host_netns_is_refused_before_anything_is_written(w: World) -> None:
    w.netns.host.add(POD_NS)
    reply = w.enroller.add(add_req())
    assert not reply.ok and reply.code == CniCode.INVALID_ENVIRONMENT and not reply.retryable
    assert reply.detail == (f"netns {POD_NS} is the host's network namespace: refusing to "
                            "capture the node's own traffic")
    assert w.events == [] and w.store.all() == []


def test_a_missing_netns_is_retryable(w: World) -> None:
    reply = w.enroller.add(add_req(netns="/run/netns/gone"))
    assert not reply.ok and reply.code == 11
    assert reply.detail == "netns /run/netns/gone does not exist"
    assert w.events == []


def test_add_needs_a_container_and_a_netns(w: World) -> None:
    reply = w.enroller.add(add_req(cid=""))
    assert (reply.ok, reply.code, reply.detail) == (
        False, CniCode.INVALID_CONFIG, "ADD needs container_id and netns")
    assert w.events == []


@pytest.mark.parametrize(("capture", "needle"), [
    ({"bogus": 1}, "capture: unknown option(s) ['bogus']"),
    ({"exclude_outbound_ports": [70000]}, "exclude_outbound_ports: port 70000"),
    ({"ipv6": "sometimes"}, "ipv6: 'sometimes' is not true or false"),
])
def test_bad_capture_options_are_refused_as_config(w: World, capture: dict[str, Any],
                                                   needle: str) -> None:
    reply = w.enroller.add(add_req(capture=capture))
    assert not reply.ok and reply.code == 7 and not reply.retryable
    assert reply.detail.startswith("invalid capture options: ") and needle in reply.detail
    assert w.events == [] and w.store.all() == []


def test_per_pod_capture_options_reach_the_spec_and_the_record(w: World) -> None:
    assert w.enroller.add(add_req(capture={"dns_capture": False,
                                           "exclude_outbound_ports": [9000]})).captured
    spec = w.engine.rules[POD_NS]
    assert (spec.dns_capture, spec.exclude_outbound_ports) == (False, (9000,))
    rec = w.store.get("c1")
    assert rec is not None and rec.capture["exclude_outbound_ports"] == [9000]


@pytest.mark.parametrize(("ips", "netns_v6", "want"), [
    (("10.22.0.5", "fd00::5"), False, True),  # the runtime's addresses decide
    (("10.22.0.5",), True, False),
    ((), True, True),  # none reported: the netns itself
    ((), False, False),
])
def test_ipv6_auto_is_decided_per_pod_and_recorded(w: World, ips: tuple[str, ...],
                                                   netns_v6: bool, want: bool) -> None:
    if netns_v6:
        w.netns.v6.add(POD_NS)
    assert w.enroller.add(add_req(ips=ips)).captured
    assert w.engine.rules[POD_NS].ipv6 is want
    rec = w.store.get("c1")
    assert rec is not None and rec.capture["ipv6"] is want


def test_an_explicit_ipv6_setting_is_not_probed(tmp_path: Path) -> None:
    w = World(tmp_path, ipv6=False)
    w.netns.v6.add(POD_NS)
    assert w.enroller.add(add_req(ips=("fd00::5",))).captured
    assert w.engine.rules[POD_NS].ipv6 is False


def test_a_namespace_outside_the_selection_is_passed_through(w: World) -> None:
    reply = w.enroller.add(add_req(namespace="kube-system"))
    assert reply.ok and not reply.captured
    assert reply.detail == "namespace 'kube-system' not selected"
    assert w.events == [] and w.store.all() == []


def test_the_label_policy_fails_closed_until_it_has_seen_the_pod(w: World) -> None:
    w.enroller.policy = Policy(None)
    reply = w.enroller.add(add_req())
    assert not reply.ok and reply.code == 11
    assert reply.detail == "pod default/web-0 not yet seen by the Kubernetes watch"
    w.enroller.policy = Policy(False)
    reply = w.enroller.add(add_req())
    assert reply.ok and not reply.captured and "dataplane-mode labels" in reply.detail
    assert w.events == []
    w.enroller.policy = Policy(True)
    assert w.enroller.add(add_req()).captured


# -- DEL, CHECK, GC --------------------------------------------------------------------


def test_del_tells_the_proxy_before_removing_the_rules(w: World) -> None:
    w.enroller.add(add_req())
    w.events.clear()
    reply = w.enroller.delete("c1")
    assert reply.ok and reply.detail == "released"
    assert w.events == [("handoff.delete", "c1"), ("remove", POD_NS)]
    assert w.store.all() == [] and w.engine.rules == {} and w.watch.watched == {}


def test_del_of_an_unknown_container_succeeds(w: World) -> None:
    reply = w.enroller.delete("nope")
    assert reply.ok and reply.detail == "unknown container" and w.events == []


def test_del_after_the_netns_went_away_touches_no_rules(w: World) -> None:
    w.enroller.add(add_req())
    w.events.clear()
    w.netns.inodes[POD_NS] = 4026539999  # the path now names another netns
    assert w.enroller.delete("c1").ok
    assert w.events == [("handoff.delete", "c1")]
    assert w.store.all() == []


def test_check_in_sync_and_drifted(w: World) -> None:
    w.enroller.add(add_req())
    req = {"cmd": "CHECK", "container_id": "c1", "pod": {"namespace": "default"}}
    reply = w.enroller.check(req)
    assert reply.ok and reply.captured and reply.detail == "in sync"
    w.engine.tampered.add(POD_NS)
    reply = w.enroller.check(req)
    assert not reply.ok and reply.code == 11
    assert reply.detail == ("redirection drifted (0 missing, 1 unexpected): ipv4 nat "
                            "MESHNODE_OUTPUT: -j ACCEPT")


def test_check_of_a_pod_that_should_be_captured_but_is_not(w: World) -> None:
    reply = w.enroller.check({"container_id": "c9", "pod": {"namespace": "default"}})
    assert not reply.ok and reply.detail == "container c9 should be captured but is not enrolled"
    reply = w.enroller.check({"container_id": "c9", "pod": {"namespace": "kube-system"}})
    assert reply.ok and reply.detail == "not selected"


def test_gc_releases_what_the_runtime_no_longer_knows(w: World) -> None:
    other = "/run/netns/pod-b"
    w.netns.inodes[other] = 4026532002
    w.enroller.add(add_req("c1"))
    w.enroller.add(add_req("c2", netns=other))
    w.events.clear()
    reply = w.enroller.gc([Attachment("c1", "eth0")])
    assert reply.ok and reply.detail == "released 1"
    assert [r.container_id for r in w.store.all()] == ["c1"]
    assert w.events == [("handoff.delete", "c2"), ("remove", other)]
    assert w.enroller.gc([]).detail == "released 1"
    assert w.store.all() == []


# -- reconcile and drift ----------------------------------------------------------------


def _known(w: World, cid: str, netns: str, inode: int, state: PodState) -> PodRecord:
    rec = PodRecord(container_id=cid, netns=netns, netns_inode=inode, ifname="eth0",
                    ips=["10.22.0.5"], name=cid, namespace="default", state=state,
                    capture={"ipv6": False})
    w.store.put(rec)
    return rec


def test_reconcile_forgets_the_gone_follows_the_moved_and_finishes_the_pending(
        w: World) -> None:
    _known(w, "gone", "/run/netns/gone", 1, PodState.ENROLLED)
    _known(w, "moved", "/run/netns/old", 2, PodState.ENROLLED)
    w.netns.inodes["/proc/42/ns/net"] = 2
    _known(w, "pending", POD_NS, 4026532001, PodState.PENDING)
    w.enroller.reconcile()
    assert w.store.get("gone") is None
    moved = w.store.get("moved")
    assert moved is not None and moved.netns == "/proc/42/ns/net"
    assert moved.detail == "repaired (reconcile)"
    assert "/proc/42/ns/net" in w.engine.rules
    pending = w.store.get("pending")
    assert pending is not None and pending.state is PodState.REDIRECTED
    assert POD_NS in w.engine.rules


def test_drift_is_repaired_and_counted(w: World) -> None:
    w.enroller.add(add_req())
    before = metric("meshnode_drift_repairs_total")
    assert w.enroller.drift_once() == 0
    w.engine.tampered.add(POD_NS)
    assert w.enroller.drift_pod("c1") == 1
    rec = w.store.get("c1")
    assert rec is not None and rec.detail == "repaired (drift)"
    assert rec.state is PodState.ENROLLED  # repair does not demote
    assert w.enroller.drift_pod("c1") == 0
    assert metric("meshnode_drift_repairs_total") == before + 1


def test_drift_leaves_a_pending_pod_to_its_add_and_drops_a_dead_one(w: World) -> None:
    _known(w, "pending", POD_NS, 4026532001, PodState.PENDING)
    assert w.enroller.drift_pod("pending") == 0
    assert w.events == []
    _known(w, "dead", "/run/netns/dead", 77, PodState.ENROLLED)
    w.watch.watched["dead"] = "/run/netns/dead"
    assert w.enroller.drift_pod("dead") == 0
    assert w.store.get("dead") is None and "dead" not in w.watch.watched


def test_a_failed_repair_is_recorded_not_raised(w: World) -> None:
    w.enroller.add(add_req())
    w.engine.tampered.add(POD_NS)
    w.engine.fail_apply = "iptables-restore exited 4"
    assert w.enroller.drift_pod("c1") == 0
    rec = w.store.get("c1")
    assert rec is not None and rec.detail.startswith("repair failed: netns ")


# -- the backend the Enroller is given ---------------------------------------------------


def test_the_enroller_uses_the_backend_it_is_given_as_is(w: World) -> None:
    # Preparing is the maker's job (make_capture_backend), not the Enroller's.
    assert w.enroller.impl is w.backend and w.backend.prepared == 0


def test_the_configured_backend_is_prepared_with_the_configs_settings(tmp_path: Path,
                                                                      monkeypatch: Any) -> None:
    monkeypatch.setenv("MESHNODE_BPF_PIN_DIR", "/sys/fs/bpf/elsewhere")
    monkeypatch.setenv("MESHNODE_BPF_CGROUP", "/host/sys/fs/cgroup")
    made: list[tuple[Any, ...]] = []
    backend = FakeBackend()

    def make(*args: Any, **kw: Any) -> FakeBackend:
        made.append((*args, kw))
        return backend

    cfg = AgentConfig(state_dir=str(tmp_path), capture=CaptureConfig(backend="ebpf"))
    assert make_capture_backend(cfg, make) is backend and backend.prepared == 1
    assert made == [("ebpf", "auto", {"bpf_pin_dir": "/sys/fs/bpf/elsewhere",
                                      "bpf_cgroup": "/host/sys/fs/cgroup"})]


def test_an_unavailable_backend_falls_back_or_is_one_config_error(tmp_path: Path) -> None:
    ebpf, nft = FakeBackend("bpffs is not mounted at /sys/fs/bpf"), FakeBackend()
    made: list[Any] = []

    def make(backend: Any, *args: Any, **kw: Any) -> FakeBackend:
        made.append(backend)
        return ebpf if backend == "ebpf" else nft

    cfg = AgentConfig(state_dir=str(tmp_path), capture=CaptureConfig(backend="ebpf"))
    with pytest.raises(ConfigError) as err:
        make_capture_backend(cfg, make)
    assert str(err.value) == ("capture.backend ebpf: bpffs is not mounted at /sys/fs/bpf "
                              "(set capture.fallback: iptables to fall back)")
    before = metric("meshnode_backend_fallback_total")
    cfg.capture.fallback = Fallback.NFTABLES
    assert make_capture_backend(cfg, make) is nft
    assert made == ["ebpf", "ebpf", "nftables"] and ebpf.closed == 1 and nft.prepared == 1
    assert metric("meshnode_backend_fallback_total") == before + 1


def test_fakes_match_the_real_interfaces() -> None:
    # The fakes stand in for what the agent passes: keep their methods in step.
    for name in ("apply", "remove", "diff"):
        assert callable(getattr(engine, name)) and hasattr(FakeEngine, name)
    for name in ("inode_of", "forbidden", "locate", "has_ipv6"):
        assert hasattr(HostNetns, name) and hasattr(FakeNetns, name)
    for name in ("prepare", "apply", "read", "remove", "expected", "close"):
        assert hasattr(engine.RuleBackend, name) and hasattr(FakeBackend, name)
