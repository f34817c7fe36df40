"""The node taint: removed once the agent is ready, only ours, never clobbering a
concurrent change to the node."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.k8s.api import KubeApi
from agent.k8s.taint import TAINT_KEY, remove_not_ready_taint
from testing.fakeapi import FakeApi, node
from tests.k8s.conftest import NODE, StubEnroller, eventually, run, source_for

OURS = {"key": TAINT_KEY, "effect": "NoSchedule"}
THEIRS = [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
          {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]


def taints(api: FakeApi) -> list[dict[str, str]]:
    result: list[dict[str, str]] = api.get("nodes", f"node-{NODE}")["spec"]["taints"]
    return result


def test_taint_removed_only_once_ready_and_only_ours(tmp_path: Path) -> None:
    async def body() -> None:
        api = await FakeApi().start()
        api.put("nodes", node(NODE, [THEIRS[0], OURS, THEIRS[1]]))
        api.put("nodes", node("node2", [OURS]))
        ready = False
        async with source_for(api, StubEnroller(tmp_path / "pods"), tmp_path,
                              ready=lambda: ready) as src:
            await eventually(src.synced)
            await asyncio.sleep(0.5)
            assert taints(api) == [THEIRS[0], OURS, THEIRS[1]], "removed before ready"
            assert not [p for p in api.patches if p["resource"] == "nodes"]
            ready = True
            await eventually(src.taint_removed.is_set, what="taint removal")
            assert taints(api) == THEIRS
            assert api.get("nodes", "node-node2")["spec"]["taints"] == [OURS]
            [patch] = [p for p in api.patches if p["resource"] == "nodes"]
            assert patch["content_type"] == "application/json-patch+json"
            assert patch["body"][0]["op"] == "test"
            assert patch["body"][0]["path"] == "/metadata/resourceVersion"
        await api.stop()
    run(body())


def test_concurrent_node_change_is_kept_and_the_removal_retried(tmp_path: Path) -> None:
    async def body() -> None:
        api = await FakeApi().start()
        api.put("nodes", node(NODE, [OURS, THEIRS[0]]))
        added = {"key": "someone/else", "effect": "NoExecute"}

        def someone_else() -> None:  # lands between our read and our patch
            n = api.get("nodes", f"node-{NODE}")
            n = {**n, "spec": {"taints": [added, *n["spec"]["taints"]]}}
            api.put("nodes", n)
        api.on_node_patch = someone_else
        kube = await KubeApi.connect(api.kubeconfig(tmp_path / "kubeconfig"))
        try:
            # One call: the refused patch (422, failed test op) is read again and retried.
            assert await remove_not_ready_taint(kube, NODE) is True
        finally:
            await kube.close()
        assert taints(api) == [added, THEIRS[0]]
        bodies = [p["body"] for p in api.patches if p["resource"] == "nodes"]
        assert len(bodies) == 2 and bodies[0][0]["value"] != bodies[1][0]["value"]
        await api.stop()
    run(body())


def test_absent_taint_means_no_patch(tmp_path: Path) -> None:
    async def body() -> None:
        api = await FakeApi().start()
        api.put("nodes", node(NODE, THEIRS))
        async with source_for(api, StubEnroller(tmp_path / "pods"), tmp_path) as src:
            await eventually(src.taint_removed.is_set)
            assert taints(api) == THEIRS
            assert not [p for p in api.patches if p["resource"] == "nodes"]
        await api.stop()
    run(body())


def test_node_read_failure_is_retried(tmp_path: Path) -> None:
    async def body() -> None:
        api = await FakeApi().start()
        api.put("nodes", node(NODE, [OURS]))
        api.fail_next("GET /api/v1/nodes", 500, times=2)
        async with source_for(api, StubEnroller(tmp_path / "pods"), tmp_path) as src:
            await eventually(src.taint_removed.is_set, timeout=10)
            assert taints(api) == []
        await api.stop()
    run(body())
