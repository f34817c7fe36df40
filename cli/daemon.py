"""Start a long-running meshnode process (agent, proxy, control plane): its logs (JSON, or
`--log-format console` for a person), then its event loop."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Coroutine
from typing import Any

LOG_LEVELS = ("debug", "info", "warning", "error")


def add_log_flags(p: argparse.ArgumentParser) -> None:
    """`--log-level` and `--log-format`, the same on every daemon."""
    from core.logs import FORMATS

    p.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    p.add_argument("--log-format", default="json", choices=FORMATS,
                   help="json: one JSON object per line, for a log pipeline (default); "
                        "console: aligned human-readable lines")


def run(main: Coroutine[Any, Any, None], log_level: str, log_format: str = "json") -> int:
    import uvloop

    from core import logs

    logs.configure(log_level, log_format)
    # uvloop for our own loop only, not as the global policy: pyroute2 runs its own asyncio
    # loop on worker threads, and uvloop cannot open its AF_NETLINK sockets.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)
    return 0
