"""The API-server source holds the cluster once: its reflectors keep no cache of their own
(core/k8s/reflector.py `cache=False`), a list is consumed object by object (its raw objects
are not held while the store converts them), and the store counts what a relist gave."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

import pytest

from controlplane.kube.informer import KubeInformers
from controlplane.kube.objects import POD, Obj, ObjectStore
from core.k8s.client import Listing
from core.k8s.reflector import Reflector, name_key


def pod(name: str, node: str = "n1") -> Obj:
    return {"metadata": {"name": name, "namespace": "ns", "uid": name,
                         "resourceVersion": "1", "managedFields": [{}]},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]}}


async def _no_watch(rv: str, timeout: int) -> AsyncIterator[bytes]:
    await asyncio.sleep(3600)
    yield b""


def test_without_a_cache_the_handler_gets_each_listed_object_once() -> None:
    listed: list[Obj] = [pod("a"), pod("b")]
    got: list[list[Obj]] = []
    seen_left: list[int] = []

    def on_relist(objs: Iterable[Obj]) -> None:
        out = []
        for o in objs:
            seen_left.append(len(listed))  # the raw list is emptied as it is read
            out.append(o)
        got.append(out)

    async def list_fn() -> Listing:
        return Listing(items=listed, resource_version="5")

    async def main() -> None:
        r: Reflector[tuple[str, str]] = Reflector(
            "pods", list_fn, _no_watch, lambda *a: None, key=name_key,
            transform=lambda o: {"metadata": o["metadata"]}, on_relist=on_relist, cache=False)
        task = asyncio.create_task(r.run())
        await asyncio.wait_for(r.synced.wait(), 5)
        task.cancel()
        assert r.cache == {} and r.resource_version == "5"
        assert [o["metadata"]["name"] for o in got[0]] == ["a", "b"]
        assert seen_left == [0, 0]
        r._line(b'{"type": "MODIFIED", "object": ' +
                b'{"metadata": {"name": "a", "namespace": "ns", "resourceVersion": "6"}}}')
        assert r.cache == {}
    asyncio.run(main())


def test_a_cacheless_reflector_needs_a_relist_handler() -> None:
    async def list_fn() -> Listing:
        return Listing(items=[], resource_version="1")

    with pytest.raises(ValueError):
        Reflector("pods", list_fn, _no_watch, lambda *a: None, key=name_key, cache=False)


def test_the_informers_keep_no_cache_and_store_projections() -> None:
    store = ObjectStore()
    inf = KubeInformers(client=object(), store=store)  # type: ignore[arg-type]  # not called
    for r in inf.reflectors.values():
        assert r._keep is False
    store.replace(POD, [pod("a")])
    got = store.get(POD, "ns", "a")
    assert got is not None and "managedFields" not in got["metadata"]
    assert got["spec"] == {"nodeName": "n1", "containers": [{}]}


def test_replace_counts_and_lets_go() -> None:
    store = ObjectStore()
    events: list[tuple[str, bool]] = []
    store.subscribe(lambda kind, ns, name, obj: events.append((name, obj is not None)))
    assert store.replace(POD, iter([pod("a"), pod("b")])) == 2
    assert store.replace(POD, iter([pod("b", node="n2")])) == 1
    assert events == [("a", True), ("b", True), ("a", False), ("b", True)]
