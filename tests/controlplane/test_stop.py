"""SIGTERM and SIGINT stop the control plane process gracefully: exit 0 within its drain
period, and an open Delta ADS stream is ended with status OK (a clean end of stream the client
reads as EOF), not reset or cancelled."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import grpc
import pytest

from tests.controlplane.harness import ADDRESS_TYPE, AdsClient, manifests, names
from tests.controlplane.proc import ControlPlaneProcess

DRAIN = 5.0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_ends_ads_streams_cleanly_and_exits_0(tmp_path: Path, sig: int) -> None:
    cp = ControlPlaneProcess(manifests(tmp_path), tmp_path / "state",
                             extra=("--drain-seconds", str(DRAIN)))
    token = cp.token("node1")
    cp.start()
    try:
        assert cp.proc is not None
        proc = cp.proc

        async def main() -> tuple[BaseException, float, int | None]:
            async with cp.channel() as ch:
                c = AdsClient(ch, token)
                first = await c.subscribe(ADDRESS_TYPE)
                assert names(first), "the example mesh has workloads"
                await c.ack(first)
                await c.expect_silence(0.2)
                signalled = time.monotonic()
                proc.send_signal(sig)
                # What the client reads next: the end of the stream, with its status.
                end: BaseException
                try:
                    extra = await c.recv(timeout=DRAIN + 5)
                    raise AssertionError(f"a response instead of the end: {extra}")
                except (EOFError, grpc.aio.AioRpcError) as exc:
                    end = exc
                took = time.monotonic() - signalled
                code = await asyncio.to_thread(proc.wait, DRAIN + 5)
                c.close()
                return end, took, code

        end, took, code = asyncio.run(main())
        # EOF is grpc.aio's read of a stream closed with status OK; a cut stream raises
        # AioRpcError (CANCELLED / UNAVAILABLE) instead.
        assert isinstance(end, EOFError), f"stream not ended cleanly: {end!r}"
        assert took < 2, f"the stream was held {took:.2f} s (ended by the drain timeout?)"
        assert code == 0, cp.log.read_text()[-2000:]
        stopping = cp.events("controlplane_stopping")
        assert len(stopping) == 1 and stopping[0]["streams"] == 1
        assert len(cp.events("controlplane_stopped")) == 1
        assert "Traceback" not in cp.log.read_text()
    finally:
        cp.stop()


def test_no_stream_opens_while_stopping(tmp_path: Path) -> None:
    """Once stopped (drain 0 s), the port no longer accepts a stream: UNAVAILABLE."""
    cp = ControlPlaneProcess(manifests(tmp_path), tmp_path / "state",
                             extra=("--drain-seconds", "0"))
    token = cp.token("node1")
    cp.start()
    try:
        assert cp.proc is not None
        cp.proc.send_signal(signal.SIGTERM)
        assert cp.proc.wait(timeout=10) == 0

        async def main() -> grpc.aio.AioRpcError:
            async with cp.channel() as ch:
                c = AdsClient(ch, token)
                try:
                    await c.subscribe(ADDRESS_TYPE)
                except grpc.aio.AioRpcError as exc:
                    return exc
                finally:
                    c.close()
                raise AssertionError("a stream was served after the stop")

        assert asyncio.run(main()).code() == grpc.StatusCode.UNAVAILABLE
    finally:
        cp.stop()
