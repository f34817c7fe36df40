"""`pod_ips` bookkeeping without scanning the map: each pod's entries are indexed per
loader (rebuilt from the pinned map at load, i.e. agent start or takeover), so enrolling and
removing a pod touch exactly its own entries; and one enroll holds no descriptor after it.

Pods here are map entries under made-up netns cookies (no inbound: no netns needed),
except for the descriptor test, which goes through the backend in a real netns."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from agent.redirect import backend as engine
from agent.redirect.ebpf.backend import EbpfBackend
from agent.redirect.ebpf.loader import Loader, LoadError, PodOpts, netns_cookie
from agent.redirect.spec import RedirectSpec
from testing.lab import Node

pytestmark = pytest.mark.kernel

BASE = 1 << 60  # far above any real netns cookie
OPTS = PodOpts(outbound_port=15001, proxy_mark=0x539, mark_mask=0xFFF)


def addrs(i: int) -> tuple[str, ...]:
    return (f"10.123.{i // 200}.{i % 200 + 1}", f"fd12:3456::{i + 1:x}")


def fake_entries(ld: Loader) -> dict[str, int]:
    """Every `pod_ips` entry of a made-up pod, read from the kernel (a full scan)."""
    return {ip: c for c, ips in ((c, ld.addrs_of(c)) for c in
                                 {int(v.value) for v in ld._table("pod_ips").values()})
            if c >= BASE for ip in ips}


def expected(ids: range | list[int]) -> dict[str, int]:
    return {ip: BASE + i for i in ids for ip in addrs(i)}


@pytest.fixture
def fake_pods(loader: Loader) -> Iterator[list[int]]:
    ids = list(range(50))
    try:
        yield ids
    finally:
        ld = Loader(pin_dir=loader.pin_dir)  # whoever enrolled them last: a fresh index
        try:
            for i in ids:
                ld.unenroll_cookie(BASE + i)
            assert fake_entries(ld) == {}
        finally:
            ld.close()


def test_removal_deletes_exactly_the_pods_entries_also_after_a_restart(
        loader: Loader, fake_pods: list[int]) -> None:
    for i in fake_pods:
        loader.enroll_cookie(BASE + i, OPTS, addrs(i))
    assert fake_entries(loader) == expected(fake_pods)
    for i in fake_pods[:25]:
        assert loader.unenroll_cookie(BASE + i)
    assert fake_entries(loader) == expected(fake_pods[25:])

    again = Loader(pin_dir=loader.pin_dir)  # a restarted agent takes the pinned maps over
    try:
        again.load()
        for i in fake_pods[25:35]:
            assert again.unenroll_cookie(BASE + i)
        assert fake_entries(again) == expected(fake_pods[35:])
        # a re-apply with a changed address set drops the stale address only
        again.enroll_cookie(BASE + 40, OPTS, addrs(40)[:1] + addrs(99)[:1])
        want = expected(fake_pods[35:])
        del want[addrs(40)[1]]
        want[addrs(99)[0]] = BASE + 40
        assert fake_entries(again) == want
    finally:
        again.close()


def test_an_address_taken_over_by_another_pod_stays_with_it(
        loader: Loader, fake_pods: list[int]) -> None:
    a, b = BASE + fake_pods[0], BASE + fake_pods[1]
    loader.enroll_cookie(a, OPTS, addrs(0))
    loader.enroll_cookie(b, OPTS, addrs(0)[:1])  # the IP moved to b (a's entry is stale)
    loader.unenroll_cookie(a)
    assert fake_entries(loader) == {addrs(0)[0]: b}


def test_a_pod_enrolled_by_another_loader_is_removed_completely(
        loader: Loader, fake_pods: list[int]) -> None:
    other = Loader(pin_dir=loader.pin_dir)
    try:
        other.load()
        other.enroll_cookie(BASE + 7, OPTS, addrs(7))
    finally:
        other.close()
    assert loader.unenroll_cookie(BASE + 7)  # unknown to this loader's index: it scans
    assert fake_entries(loader) == {}


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_enroll_and_remove_leave_no_descriptor_behind(
        pods: tuple[Node, Node], loader: Loader, monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = pods
    impl, spec = EbpfBackend(loader), RedirectSpec()
    engine.apply(client.path, spec, impl)  # warm-up outside the count
    engine.remove(client.path, spec, impl)
    own = sorted(a for a in (client.ip4, client.ip6) if a)
    before = open_fds()
    for _ in range(20):
        engine.apply(client.path, spec, impl)
        assert loader.addrs_of(netns_cookie(client.path)) == own
        engine.remove(client.path, spec, impl)
        assert loader.addrs_of(netns_cookie(client.path)) == []
    assert open_fds() == before

    def fail(*_: object) -> None:
        raise LoadError("injected")

    monkeypatch.setattr(loader, "enroll_cookie", fail)
    for _ in range(5):
        with pytest.raises(engine.RedirectError, match="injected"):
            engine.apply(client.path, spec, impl)
    assert open_fds() == before
