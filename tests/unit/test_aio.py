"""core/aio.py: SO_PEERCRED and cancel-and-wait."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from core.aio import PeerCredentials, cancel_and_wait, peer_credentials


def test_peer_credentials_of_a_socketpair_are_ours() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert peer_credentials(a) == PeerCredentials(os.getpid(), os.getuid(), os.getgid())


def test_cancel_and_wait_cancels_and_drops_results_and_errors() -> None:
    async def main() -> None:
        async def forever() -> None:
            await asyncio.Event().wait()

        async def boom() -> None:
            raise RuntimeError("dropped")

        tasks = {asyncio.create_task(forever()), asyncio.create_task(boom())}
        await asyncio.sleep(0)
        await cancel_and_wait(tasks)
        assert all(t.done() for t in tasks)
        await cancel_and_wait([])

    asyncio.run(main())


def test_cancel_and_wait_copes_with_a_set_that_shrinks() -> None:
    async def main() -> None:
        live: set[asyncio.Task[None]] = set()
        for _ in range(3):
            t = asyncio.create_task(asyncio.sleep(10))
            live.add(t)
            t.add_done_callback(live.discard)
        await cancel_and_wait(live)
        assert not live

    asyncio.run(main())


def test_cancelling_the_caller_still_cancels_it() -> None:
    async def main() -> None:
        async def stubborn() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                await asyncio.sleep(0.05)   # slow to finish
                raise

        inner = asyncio.create_task(stubborn())
        await asyncio.sleep(0)
        outer = asyncio.create_task(cancel_and_wait([inner]))
        await asyncio.sleep(0)
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer

    asyncio.run(main())
