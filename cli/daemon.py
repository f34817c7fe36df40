"""Start a long-running meshnode process (agent, proxy): JSON logs, then its event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def run(main: Coroutine[Any, Any, None], log_level: str) -> int:
    import uvloop

    from core import logs

    logs.configure(log_level)
    # uvloop for our own loop only, not as the global policy: pyroute2 runs its own asyncio
    # loop on worker threads, and uvloop cannot open its AF_NETLINK sockets.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)
    return 0
