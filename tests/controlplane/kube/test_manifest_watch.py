"""The manifests watcher: an edit reaches the store as events for what changed and nothing
else; a file caught half-written is held back (its objects stay) until it parses again or
its removals prove stable; a deleted file takes its objects with it."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from controlplane.kube import objects as k
from controlplane.kube.manifests import ManifestWatcher
from core.fswatch import HOLD_SECONDS

T = TypeVar("T")
Event = tuple[str, str, str, str]  # kind, namespace, name, "put"/"delete"

SVC = """\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: foo}}
spec: {{ports: [{{port: {port}}}]}}
"""
AP = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: foo}}
spec:
  action: DENY
  rules: [{{from: [{{source: {{namespaces: [{ns}]}}}}]}}]
"""
HELD = "meshnode_controlplane_manifest_reads_held_back_total"


def run(coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
    async def capped() -> T:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(capped())


async def eventually(check: Callable[[], bool], timeout: float = 5) -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def watching(path: Path) -> AsyncIterator[tuple[ManifestWatcher, list[Event]]]:
    """A watcher on `path` (loaded, running), and the store events after the load."""
    store = k.ObjectStore()
    w = ManifestWatcher(path, store)
    w.load()
    events: list[Event] = []
    store.subscribe(lambda kind, ns, name, obj: events.append(
        (kind.kind, ns, name, "put" if obj is not None else "delete")))
    task = asyncio.create_task(w.run())
    await asyncio.sleep(0.05)  # the inotify watch is set before run() first waits
    try:
        yield w, events
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def quiet() -> None:
    """Long enough for any reload (debounce, a hold-back and its re-read) to be over."""
    await asyncio.sleep(HOLD_SECONDS * 2 + 0.2)


def test_an_edit_pushes_only_what_changed(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(SVC.format(name="web", port=80) + "---\n" + SVC.format(name="api", port=81))
    b.write_text(AP.format(name="deny-dev", ns="dev"))

    async def go() -> None:
        async with watching(tmp_path) as (w, events):
            a.write_text(SVC.format(name="web", port=80) + "---\n"
                         + SVC.format(name="api", port=8081))
            await eventually(lambda: len(events) >= 1)
            await quiet()
            assert events == [("Service", "foo", "api", "put")]
            api = w.store.get(k.SERVICE, "foo", "api")
            assert api is not None and api["spec"]["ports"][0]["port"] == 8081
            # A new file, and a rewrite of b.yaml with the same bytes: one event.
            (tmp_path / "c.yaml").write_text(AP.format(name="deny-test", ns="test"))
            b.write_text(AP.format(name="deny-dev", ns="dev"))
            await eventually(lambda: len(events) >= 2)
            await quiet()
            assert events[1:] == [("AuthorizationPolicy", "foo", "deny-test", "put")]
            assert w.reloads == 2
    run(go())


def test_a_deleted_file_takes_its_objects(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(SVC.format(name="web", port=80))
    b.write_text(AP.format(name="deny-dev", ns="dev") + "---\n" + SVC.format(name="db", port=5))

    async def go() -> None:
        async with watching(tmp_path) as (w, events):
            b.unlink()
            await eventually(lambda: len(events) >= 2)
            await quiet()
            assert sorted(events) == [("AuthorizationPolicy", "foo", "deny-dev", "delete"),
                                      ("Service", "foo", "db", "delete")]
            assert [o["metadata"]["name"] for o in w.store.list(k.SERVICE)] == ["web"]
    run(go())


def test_a_file_that_does_not_parse_is_held_back_until_it_does(tmp_path: Path) -> None:
    a = tmp_path / "a.yaml"
    a.write_text(SVC.format(name="web", port=80) + "---\n" + SVC.format(name="api", port=81))
    before = REGISTRY.get_sample_value(HELD, {"reason": "invalid"}) or 0.0

    async def go() -> None:
        async with watching(tmp_path) as (w, events):
            with capture_logs() as logs:
                a.write_text(SVC.format(name="web", port=80) + "---\napiVersion: v1\n"
                             "kind: Service\nmetadata: {name: api, namespace: [foo\n")
                await eventually(lambda: any(e["event"] == "manifest_file_invalid"
                                             for e in logs))
                await quiet()
            assert events == []  # both objects stay served
            assert w.store.count(k.SERVICE) == 2
            assert w.held_back >= 1
            assert (REGISTRY.get_sample_value(HELD, {"reason": "invalid"}) or 0) >= before + 1
            assert REGISTRY.get_sample_value(
                "meshnode_controlplane_manifest_files_invalid") == 1
            (bad,) = [e for e in logs if e["event"] == "manifest_file_invalid"]
            assert bad["error"].startswith(f"{a}:9: ")  # the line of the broken flow list
            assert bad["kept"] == 2
            # Another file changing does not drop the held-back file's objects either.
            (tmp_path / "b.yaml").write_text(SVC.format(name="db", port=5))
            await eventually(lambda: len(events) >= 1)
            await quiet()
            assert events == [("Service", "foo", "db", "put")]
            # It parses again: what changed in it is pushed.
            a.write_text(SVC.format(name="web", port=80))
            await eventually(lambda: len(events) >= 2)
            await quiet()
            assert events[1:] == [("Service", "foo", "api", "delete")]
            assert REGISTRY.get_sample_value(
                "meshnode_controlplane_manifest_files_invalid") == 0
    run(go())


def test_a_truncated_write_that_parses_removes_nothing(tmp_path: Path) -> None:
    a = tmp_path / "a.yaml"
    full = SVC.format(name="web", port=80) + "---\n" + SVC.format(name="api", port=81)
    a.write_text(full)

    async def go() -> None:
        async with watching(tmp_path) as (w, events):
            with open(a, "w") as f:  # the writer's first piece: one object of two
                f.write(SVC.format(name="web", port=80))
            await eventually(lambda: w.held_back >= 1)  # `api` would go: held back
            with open(a, "a") as f:
                f.write("---\n" + SVC.format(name="api", port=81))
            await quiet()
            await quiet()
            assert events == []
            assert w.store.count(k.SERVICE) == 2
    run(go())


def test_a_single_file_path_and_a_configmap_swap(tmp_path: Path) -> None:
    # A ConfigMap volume: mesh.yaml -> ..data/mesh.yaml, ..data -> ..v1; an update points
    # ..data at a new directory by rename.
    v1, v2 = tmp_path / "..v1", tmp_path / "..v2"
    v1.mkdir()
    v2.mkdir()
    (v1 / "mesh.yaml").write_text(SVC.format(name="web", port=80))
    (v2 / "mesh.yaml").write_text(SVC.format(name="web", port=80) + "---\n"
                                  + AP.format(name="deny-dev", ns="dev"))
    (tmp_path / "..data").symlink_to("..v1")
    (tmp_path / "mesh.yaml").symlink_to("..data/mesh.yaml")

    async def go() -> None:
        async with watching(tmp_path / "mesh.yaml") as (w, events):
            assert w.store.count(k.SERVICE) == 1
            (tmp_path / "..data_tmp").symlink_to("..v2")
            os.rename(tmp_path / "..data_tmp", tmp_path / "..data")
            await eventually(lambda: len(events) >= 1)
            await quiet()
            assert events == [("AuthorizationPolicy", "foo", "deny-dev", "put")]
    run(go())


def test_load_fills_the_store_and_a_missing_path_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(SVC.format(name="web", port=80) + "---\n"
                                     + AP.format(name="deny-dev", ns="dev"))
    store = k.ObjectStore()
    m = ManifestWatcher(tmp_path, store).load()
    assert m.count() == 2 and m.errors == []
    assert store.get(k.SERVICE, "foo", "web") == m.objects[k.SERVICE][0]
    assert store.count(k.AUTHORIZATION_POLICY) == 1
    with pytest.raises(FileNotFoundError):  # a missing --config PATH fails the start
        ManifestWatcher(tmp_path / "nope", k.ObjectStore()).load()
