"""The agent's end of the plugin socket (agent/nodeagent/cniserver.py), served for real on a
unix socket, against what a broken or hostile peer can send it."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from types import SimpleNamespace
from typing import Any

from agent.nodeagent.cniserver import CniServer


def exchange(sockdir: str, payload: bytes) -> dict[str, Any]:
    """Serve one request with a real CniServer and return its reply."""
    path = os.path.join(sockdir, "agent.sock")
    enroller: Any = SimpleNamespace(cfg=SimpleNamespace(proxy_handoff=False), handoff=None)

    async def main() -> bytes:
        server = CniServer(path, enroller, ready=lambda: True)
        await server.start()
        try:
            loop = asyncio.get_running_loop()

            def client() -> bytes:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(10)
                    s.connect(path)
                    s.sendall(payload)
                    return s.makefile("rb").readline()

            return await loop.run_in_executor(None, client)
        finally:
            await server.stop()

    reply: dict[str, Any] = json.loads(asyncio.run(main()))
    return reply


def test_status_round_trip(sockdir: str) -> None:
    # Positive control for the harness: a well-formed request gets an answer.
    assert exchange(sockdir, b'{"v": 1, "cmd": "STATUS"}\n')["ok"] is True


def test_deeply_nested_request_is_refused_cleanly(sockdir: str) -> None:
    """Nesting past json.loads's recursion limit is a malformed request (code 7), not an
    internal error: the agent answers and stays up."""
    deep = b'{"v": 1, "cmd": "ADD", "capture": ' + b"[" * 5000 + b"]" * 5000 + b"}\n"
    reply = exchange(sockdir, deep)
    assert reply["ok"] is False and reply["code"] == 7
    assert reply["msg"] == "malformed request: nested too deeply"
