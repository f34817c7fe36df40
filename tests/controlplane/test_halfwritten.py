"""A mesh file caught mid-write (truncated, then written in pieces) is never pushed: the last
good mesh stays served until the file is stable, and only the complete file is pushed. An
intended removal (stable, valid) is pushed; a file left empty is refused."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from tests.controlplane.harness import (
    ADDRESS_TYPE,
    AUTHORIZATION_TYPE,
    EXAMPLE,
    AdsClient,
    channel,
    control_plane,
    eventually,
    names,
    run,
)
from tests.controlplane.proc import ControlPlaneProcess

NEW_POLICY = """\
  - name: deny-sleep
    namespace: default
    action: deny
    rules:
      - from:
          - principals: [cluster.local/ns/default/sa/sleep]
"""
HELD = "meshnode_controlplane_mesh_reads_held_back_total"


async def _watch(c: AdsClient, seen: list[Any], stop: asyncio.Event) -> None:
    """Every response the client gets, acked, until `stop`."""
    while not stop.is_set():
        try:
            r = await c.recv(timeout=0.1)
        except TimeoutError:
            continue
        seen.append(r)
        await c.ack(r)


def _append(path: Path, text: str) -> None:
    with open(path, "a") as f:  # each close is an inotify CLOSE_WRITE the watcher sees
        f.write(text)


def test_truncate_then_slow_write_never_pushes_a_removal(tmp_path: Path) -> None:
    mesh = tmp_path / "mesh.yaml"
    good = EXAMPLE.read_text()
    mesh.write_text(good)
    cp = ControlPlaneProcess(mesh, tmp_path / "state")
    token = cp.token("node1")
    cp.start()
    try:
        held_before = {r: cp.metric(HELD, reason=r) for r in ("empty", "invalid", "removes")}
        new = good + NEW_POLICY
        # Cut at a line: the first piece is a valid mesh with two workloads and the policy
        # missing, exactly what a reader must not take for the new mesh.
        cut = new.index("  - name: echo-1")

        async def main() -> list[Any]:
            async with cp.channel() as ch:
                c = AdsClient(ch, token)
                await c.ack(await c.subscribe(ADDRESS_TYPE))
                await c.ack(await c.subscribe(AUTHORIZATION_TYPE))
                seen: list[Any] = []
                stop = asyncio.Event()
                watcher = asyncio.create_task(_watch(c, seen, stop))
                # A non-atomic edit, slowly: truncate, then the file in two pieces.
                mesh.write_text("")
                await asyncio.sleep(0.1)
                _append(mesh, new[:cut])
                await asyncio.sleep(0.15)
                _append(mesh, new[cut:])
                await eventually(lambda: any(r.type_url == AUTHORIZATION_TYPE for r in seen),
                                 timeout=5)
                await asyncio.sleep(0.8)  # anything else it would push
                stop.set()
                await watcher
                c.close()
                return seen

        seen = asyncio.run(main())
        assert [list(r.removed_resources) for r in seen if r.removed_resources] == []
        # Exactly one push: the complete file's new policy, nothing before it.
        assert [(r.type_url, names(r)) for r in seen] == [
            (AUTHORIZATION_TYPE, ["default/deny-sleep"])]
        assert len(cp.events("mesh_read_held_back")) >= 1
        assert sum(cp.metric(HELD, reason=r) - held_before[r] for r in held_before) >= 1
        assert cp.events("mesh_file_rejected") == []
    finally:
        cp.stop()


def test_a_stable_emptied_mesh_is_pushed(tmp_path: Path) -> None:
    """`workloads: []` (and nothing else) on purpose: held back once, then pushed."""
    async def main() -> None:
        async with control_plane(tmp_path) as cp, channel(cp) as ch:
            c = AdsClient(ch, cp.node_token("node1"))
            first = await c.subscribe(ADDRESS_TYPE)
            await c.ack(first)
            held = cp.watcher.held_back
            with capture_logs() as logs:
                (tmp_path / "mesh.yaml").write_text("workloads: []\n")
                r = await c.recv(timeout=5)
            assert sorted(r.removed_resources) == names(first) and not r.resources
            assert cp.watcher.held_back == held + 1
            assert [e["reason"] for e in logs if e["event"] == "mesh_read_held_back"] == [
                "removes"]
            assert cp.store.empty
    run(main())


def test_a_file_left_empty_is_refused_and_the_mesh_kept(tmp_path: Path) -> None:
    async def main() -> None:
        async with control_plane(tmp_path) as cp, channel(cp) as ch:
            c = AdsClient(ch, cp.node_token("node1"))
            first = await c.subscribe(ADDRESS_TYPE)
            await c.ack(first)
            version = cp.store.version
            with capture_logs() as logs:
                (tmp_path / "mesh.yaml").write_text("")
                await eventually(lambda: cp.watcher.rejects == 1)
                await c.expect_silence(0.3)
            rejected = [e for e in logs if e["event"] == "mesh_file_rejected"]
            assert len(rejected) == 1 and rejected[0]["error"].startswith("empty file")
            assert [e["reason"] for e in logs if e["event"] == "mesh_read_held_back"] == [
                "empty"]
            assert cp.store.version == version and not cp.store.empty
            # The writer comes back with the full file: nothing to push, it is what we serve.
            (tmp_path / "mesh.yaml").write_text(EXAMPLE.read_text())
            await c.expect_silence(0.6)
    run(main())
