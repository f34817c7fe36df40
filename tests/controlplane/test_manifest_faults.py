"""A manifests file caught mid-write (truncated, then written in pieces) is never pushed: the
objects served stay served until the file is stable, and only the complete file is pushed.
A removal that is meant (the file stays that way) is pushed, after one hold-back.

End to end, over ADS: the watcher itself (files that do not parse, a truncated write that
parses, deleted files) is tested in tests/controlplane/kube/test_manifest_watch.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from testing import mesh_manifests as mm
from tests.controlplane.harness import (
    ADDRESS_TYPE,
    AUTHORIZATION_TYPE,
    EXAMPLE_FILE,
    AdsClient,
    channel,
    control_plane,
    deny_sleep,
    example,
    manifests,
    names,
    run,
)
from tests.controlplane.proc import ControlPlaneProcess

HELD = "meshnode_controlplane_manifest_reads_held_back_total"


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
    conf = manifests(tmp_path)
    path = conf / EXAMPLE_FILE
    cp = ControlPlaneProcess(conf, tmp_path / "state")
    token = cp.token("node1")
    cp.start()
    try:
        held_before = {r: cp.metric(HELD, reason=r) for r in ("invalid", "removes")}
        mm.write(tmp_path, "new.yaml", *example(), deny_sleep())
        new = (tmp_path / "new.yaml").read_text()
        # Cut at a document: the first piece is valid manifests with echo-1, echo-2 and the
        # policies missing, exactly what a reader must not take for the new objects.
        cut = new.index("---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: echo-1\n")

        async def main() -> list[Any]:
            async with cp.channel() as ch:
                c = AdsClient(ch, token)
                await c.ack(await c.subscribe(ADDRESS_TYPE))
                await c.ack(await c.subscribe(AUTHORIZATION_TYPE))
                seen: list[Any] = []
                stop = asyncio.Event()
                watcher = asyncio.create_task(_watch(c, seen, stop))
                # A non-atomic edit, slowly: truncate, then the file in two pieces.
                path.write_text("")
                await asyncio.sleep(0.1)
                _append(path, new[:cut])
                await asyncio.sleep(0.15)
                _append(path, new[cut:])
                loop = asyncio.get_running_loop()
                end = loop.time() + 5
                while not any(r.type_url == AUTHORIZATION_TYPE for r in seen):
                    assert loop.time() < end, "the complete file was not pushed"
                    await asyncio.sleep(0.02)
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
        held = cp.events("manifest_read_held_back")
        assert held and {e["reason"] for e in held} == {"removes"}, held
        assert cp.metric(HELD, reason="removes") - held_before["removes"] >= 1
        assert cp.metric(HELD, reason="invalid") == held_before["invalid"]
        assert cp.events("manifest_file_invalid") == []
    finally:
        cp.stop()


def test_a_stable_removal_is_pushed_after_one_hold_back(tmp_path: Path) -> None:
    """Every pod, the service and the policy taken out on purpose (the file keeps only the
    namespace and the nodes): held back once, then pushed."""
    async def main() -> None:
        async with control_plane(tmp_path) as cp, channel(cp) as ch:
            c = AdsClient(ch, cp.node_token("node1"))
            first = await c.subscribe(ADDRESS_TYPE)
            await c.ack(first)
            assert len(names(first)) == 4
            watcher = cp.manifests
            assert watcher is not None
            held = watcher.held_back
            with capture_logs() as logs:
                mm.write(tmp_path / "manifests", EXAMPLE_FILE, *mm.two_nodes())
                r = await c.recv(timeout=5)
            assert sorted(r.removed_resources) == names(first) and not r.resources
            assert watcher.held_back == held + 1
            assert [e["reason"] for e in logs if e["event"] == "manifest_read_held_back"] == [
                "removes"]
            assert not cp.store.snapshot[ADDRESS_TYPE]
            assert not cp.store.snapshot[AUTHORIZATION_TYPE]
            await c.expect_silence(0.5)
            c.close()
    run(main())
