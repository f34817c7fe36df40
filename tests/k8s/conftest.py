"""Shared pieces of the Kubernetes pod source tests: a stub Enroller (the `PodEnrollment`
interface, unit level only), a running source against the fake API, and small helpers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from agent.k8s.api import KubeApi
from agent.k8s.source import KubePodSource
from agent.nodeagent.enroll import PodEnrollment, Reply, fail
from agent.nodeagent.pods import PodRecord, PodState, PodStore
from testing.fakeapi import FakeApi

NODE = "node1"


def run(coro: Coroutine[Any, Any, None], timeout: float = 15.0) -> None:
    async def capped() -> None:
        await asyncio.wait_for(coro, timeout)
    asyncio.run(capped())


async def eventually(pred: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.02)


class StubEnroller:
    """Records what the source asks; enrolls into a real PodStore so records look real."""

    def __init__(self, store_dir: Path) -> None:
        self.store = PodStore(store_dir)
        self.added: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.fail_adds = 0
        self._lock = threading.Lock()

    def add(self, req: dict[str, Any]) -> Reply:
        with self._lock:
            self.added.append(req)
            if self.fail_adds:
                self.fail_adds -= 1
                return fail("the node proxy did not take the pod: not connected")
        pod = req["pod"]
        self.store.put(PodRecord(container_id=req["container_id"], netns=req["netns"],
                                 netns_inode=1, ifname="", ips=req["ips"], name=pod["name"],
                                 namespace=pod["namespace"], uid=pod["uid"],
                                 state=PodState.ENROLLED))
        return Reply(ok=True, captured=True, detail="enrolled")

    def delete(self, cid: str) -> Reply:
        with self._lock:
            self.deleted.append(cid)
        self.store.drop(cid)
        return Reply(ok=True, detail="released")

    def enrolled_names(self) -> set[str]:
        return {r.name for r in self.store.all()}


def fake_netns(ips: list[str]) -> str | None:
    """Unit level: every pod IP "has" a netns named after it."""
    return f"/fake/netns/{ips[0]}"


@asynccontextmanager
async def source_for(api: FakeApi, enroller: PodEnrollment, tmp: Path, istio: bool = False,
                     ready: Callable[[], bool] = lambda: True,
                     **kw: Any) -> AsyncIterator[KubePodSource]:
    kube = await KubeApi.connect(api.kubeconfig(tmp / "kubeconfig"))
    src = KubePodSource(kube, enroller, NODE, istio, ready, workers=2,
                        watch_timeout_seconds=kw.pop("watch_timeout_seconds", 30),
                        retry_seconds=0.05, find_netns=kw.pop("find_netns", fake_netns), **kw)
    # Fast reconnects: the tests exercise backoff, not its real pace.
    for inf in (src.pods, src.namespaces):
        inf.backoff.initial = 0.02
        inf.backoff.cap = 0.2
    await src.start()
    try:
        yield src
    finally:
        await src.stop()
        await kube.close()
