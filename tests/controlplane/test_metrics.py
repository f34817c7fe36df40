"""The control plane's monitoring port: /metrics, /healthz, /readyz over real HTTP, with the
metrics moved by real gRPC calls (ADS streams, NACKs, CSRs) and real manifest edits.

The metrics live in the process-wide registry and earlier tests in this process moved them
too: counters are compared before/after, gauges read while only this control plane runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from google.rpc import status_pb2
from prometheus_client import CONTENT_TYPE_LATEST

from controlplane import http
from testing import mesh_manifests as mm
from tests.controlplane.harness import (
    ADDRESS_TYPE,
    AUTHORIZATION_TYPE,
    EXAMPLE_FILE,
    AdsClient,
    channel,
    control_plane,
    deny_sleep,
    eventually,
    example,
    http_get,
    manifests,
    run,
    sample,
    scrape,
)
from tests.controlplane.test_ca_grpc import ECHO_ID, SLEEP_ID, call, make_csr, refused, request

M = "meshnode_controlplane_"
HELD = M + "manifest_reads_held_back_total"
INVALID_FILES = M + "manifest_files_invalid"


def monitored(tmp_path: Path, docs: Sequence[mm.Obj | str] | None = None) -> Any:
    return control_plane(tmp_path, docs, metrics_address="127.0.0.1:0")


def test_monitoring_port_serves_metrics_health_and_readiness(tmp_path: Path) -> None:
    async def main() -> None:
        async with monitored(tmp_path) as cp:
            assert cp.metrics_port not in (0, cp.port)
            assert (await http_get(cp, "/healthz"))[0] == 200
            assert (await http_get(cp, "/readyz"))[::2] == (200, "ready\n")
            status, ctype, _ = await http_get(cp, "/metrics")
            assert status == 200 and ctype == CONTENT_TYPE_LATEST
            assert (await http_get(cp, "/nope"))[0] == 404
            m = await scrape(cp)
            # The example mesh: 3 workloads + 1 service (Address), 1 policy (Authorization).
            assert sample(m, M + "resources", type_url=ADDRESS_TYPE) == 4
            assert sample(m, M + "resources", type_url=AUTHORIZATION_TYPE) == 1
            assert sample(m, M + "mesh_version") == cp.store.version == 1
            assert sample(m, INVALID_FILES) == 0
            assert sample(m, M + "mesh_last_reload_timestamp_seconds") > 1.6e9
            port = cp.metrics_port
        # Stopped: the monitoring port is closed with the rest.
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return
        writer.close()
        raise AssertionError("the monitoring port is still open after stop()")
    run(main())


def test_readyz_is_503_while_not_serving() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    async def main() -> None:
        serving = False
        async with TestClient(TestServer(http.make_app(lambda: serving))) as client:
            assert (await client.get("/readyz")).status == 503
            serving = True
            assert (await client.get("/readyz")).status == 200
    run(main())


def test_no_metrics_address_no_port(tmp_path: Path) -> None:
    async def main() -> None:
        async with control_plane(tmp_path) as cp:
            assert cp.metrics_port == 0 and cp._http is None
    run(main())


def test_a_busy_metrics_port_fails_start_and_releases_the_grpc_port(tmp_path: Path) -> None:
    async def main() -> None:
        async with monitored(tmp_path) as first:
            from controlplane.server import ControlPlane, ControlPlaneConfig
            second = ControlPlane(ControlPlaneConfig(
                config=manifests(tmp_path / "b"), address="127.0.0.1:0",
                state_dir=tmp_path / "b" / "state",
                metrics_address=f"127.0.0.1:{first.metrics_port}"))
            try:
                await second.start()
            except OSError as exc:
                assert f"cannot serve metrics on 127.0.0.1:{first.metrics_port}" in str(exc)
            else:
                await second.stop(0)
                raise AssertionError("started on a busy metrics port")
            assert not second.ready()
            # Its gRPC port was bound and must be free again.
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", second.port)
            except OSError:
                return
            writer.close()
            raise AssertionError("the gRPC port stayed open after the failed start")
    run(main())


def test_ads_clients_by_node_and_pushes_by_type(tmp_path: Path) -> None:
    node = "metrics-node-a"  # any node may hold a token; a name no other test uses

    async def main() -> None:
        async with monitored(tmp_path) as cp, channel(cp) as ch:
            before = await scrape(cp)
            assert sample(before, M + "ads_clients", node=node) == 0
            c = AdsClient(ch, cp.node_token(node))
            r = await c.subscribe(ADDRESS_TYPE)
            await c.ack(r)
            c2 = AdsClient(ch, cp.node_token(node))
            await c2.subscribe(ADDRESS_TYPE)
            after = await scrape(cp)
            assert sample(after, M + "ads_clients", node=node) == 2
            pushes = M + "xds_pushes_total"
            assert (sample(after, pushes, type_url=ADDRESS_TYPE, trigger="request")
                    - sample(before, pushes, type_url=ADDRESS_TYPE, trigger="request")) == 2
            assert (sample(after, pushes, type_url=AUTHORIZATION_TYPE, trigger="request")
                    == sample(before, pushes, type_url=AUTHORIZATION_TYPE, trigger="request"))
            # An ACK is neither a push nor a NACK.
            assert (sample(after, M + "xds_nacks_total", type_url=ADDRESS_TYPE)
                    == sample(before, M + "xds_nacks_total", type_url=ADDRESS_TYPE))
            c.close()

            async def one_left() -> bool:
                return sample(await scrape(cp), M + "ads_clients", node=node) == 1
            await eventually(one_left)
            c2.close()

            async def none_left() -> bool:
                return sample(await scrape(cp), M + "ads_clients", node=node) == 0
            await eventually(none_left)
    run(main())


def test_a_nack_is_counted_by_type(tmp_path: Path) -> None:
    async def main() -> None:
        async with monitored(tmp_path) as cp, channel(cp) as ch:
            c = AdsClient(ch, cp.node_token("node1"))
            r = await c.subscribe(ADDRESS_TYPE)
            before = await scrape(cp)
            bad = r.resources[0].name
            await c.send(type_url=ADDRESS_TYPE, response_nonce=r.nonce,
                         error_detail=status_pb2.Status(code=3, message=f"{bad}: DecodeError"))

            async def nacked() -> bool:
                m = await scrape(cp)
                return (sample(m, M + "xds_nacks_total", type_url=ADDRESS_TYPE)
                        == sample(before, M + "xds_nacks_total", type_url=ADDRESS_TYPE) + 1)
            await eventually(nacked)
            # A NACK with a stale nonce is not an answer to anything: not counted.
            await c.send(type_url=ADDRESS_TYPE, response_nonce="1-stale",
                         error_detail=status_pb2.Status(code=3, message="late"))
            await c.expect_silence()
            m = await scrape(cp)
            assert (sample(m, M + "xds_nacks_total", type_url=ADDRESS_TYPE)
                    == sample(before, M + "xds_nacks_total", type_url=ADDRESS_TYPE) + 1)
            assert (sample(m, M + "xds_nacks_total", type_url=AUTHORIZATION_TYPE)
                    == sample(before, M + "xds_nacks_total", type_url=AUTHORIZATION_TYPE))
            c.close()
    run(main())


def test_reloads_bad_and_good_edits_and_the_push_they_cause(tmp_path: Path) -> None:
    async def main() -> None:
        async with monitored(tmp_path) as cp, channel(cp) as ch:
            conf = tmp_path / "manifests"
            path = conf / EXAMPLE_FILE
            good = path.read_text()
            c = AdsClient(ch, cp.node_token("node1"))
            await c.ack(await c.subscribe(ADDRESS_TYPE))
            await c.ack(await c.subscribe(AUTHORIZATION_TYPE))
            m0 = await scrape(cp)

            # 1. A bad edit (not YAML): held back, the file counted invalid, nothing else moves.
            path.write_text(good.replace("podIP: 10.1.2.2", "podIP: [10.1.2.2"))

            async def one_invalid() -> bool:
                return sample(await scrape(cp), INVALID_FILES) == 1
            await eventually(one_invalid)
            m1 = await scrape(cp)
            assert sample(m1, HELD, reason="invalid") == sample(m0, HELD, reason="invalid") + 1
            assert sample(m1, HELD, reason="removes") == sample(m0, HELD, reason="removes")
            assert sample(m1, M + "mesh_version") == sample(m0, M + "mesh_version") == 1
            assert (sample(m1, M + "mesh_last_reload_timestamp_seconds")
                    == sample(m0, M + "mesh_last_reload_timestamp_seconds"))
            await c.expect_silence(0.1)

            # 2. A good edit adding a policy: valid again, a new version, one more
            #    Authorization resource, and one change push whose latency is observed.
            mm.write(conf, EXAMPLE_FILE, *example(), deny_sleep())
            r = await c.recv()
            assert r.type_url == AUTHORIZATION_TYPE
            await c.ack(r)
            await c.expect_silence(0.1)
            m2 = await scrape(cp)
            assert sample(m2, INVALID_FILES) == 0
            assert sample(m2, HELD, reason="invalid") == sample(m1, HELD, reason="invalid")
            assert sample(m2, M + "mesh_version") == cp.store.version == 2
            assert sample(m2, M + "resources", type_url=AUTHORIZATION_TYPE) == 2
            assert sample(m2, M + "resources", type_url=ADDRESS_TYPE) == 4
            assert (sample(m2, M + "mesh_last_reload_timestamp_seconds")
                    > sample(m0, M + "mesh_last_reload_timestamp_seconds"))
            pushes = M + "xds_pushes_total"
            assert (sample(m2, pushes, type_url=AUTHORIZATION_TYPE, trigger="change")
                    == sample(m0, pushes, type_url=AUTHORIZATION_TYPE, trigger="change") + 1)
            assert (sample(m2, pushes, type_url=ADDRESS_TYPE, trigger="change")
                    == sample(m0, pushes, type_url=ADDRESS_TYPE, trigger="change"))
            latency = M + "push_latency_seconds"
            assert sample(m2, latency + "_count") == sample(m0, latency + "_count") + 1
            spent = sample(m2, latency + "_sum") - sample(m0, latency + "_sum")
            # From the change of the objects to the push: well under the test's wait.
            assert 0 < spent < 3, spent

            # 3. The file unreadable as text (not UTF-8): invalid too, its objects kept; put
            #    back as it was, valid again, and nothing pushed (the same objects).
            served = path.read_bytes()
            path.write_bytes(b"\xff\xfe" + served)
            await eventually(one_invalid)

            async def valid() -> bool:
                return sample(await scrape(cp), INVALID_FILES) == 0
            mm.write(conf, EXAMPLE_FILE, served.decode())
            await eventually(valid)
            m3 = await scrape(cp)
            assert sample(m3, HELD, reason="invalid") > sample(m2, HELD, reason="invalid")
            assert sample(m3, M + "mesh_version") == 2  # the same objects: nothing pushed
            assert sample(m3, M + "resources", type_url=AUTHORIZATION_TYPE) == 2
            await c.expect_silence(0.1)
            c.close()
    run(main())


def test_csrs_signed_and_refused_by_reason(tmp_path: Path) -> None:
    async def main() -> None:
        async with monitored(tmp_path) as cp:
            before = await scrape(cp)
            await call(cp, request(make_csr(SLEEP_ID)))                        # signed
            await call(cp, request(make_csr(ECHO_ID)), node="node2")          # signed
            e = await refused(cp, request(make_csr(SLEEP_ID)), token="")
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED
            e = await refused(cp, request(make_csr(SLEEP_ID)), node="node2")   # not on node2
            assert e.code() == grpc.StatusCode.PERMISSION_DENIED
            e = await refused(cp, request("not a csr"))
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
            e = await refused(cp, request(make_csr("spiffe://other.td/ns/default/sa/sleep")))
            assert e.code() == grpc.StatusCode.PERMISSION_DENIED
            e = await refused(cp, request(make_csr("https://not-spiffe/x")))
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
            e = await refused(cp, request(make_csr(SLEEP_ID), ttl=-1))
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
            after = await scrape(cp)

            def moved(name: str, **labels: str) -> float:
                return sample(after, name, **labels) - sample(before, name, **labels)
            assert moved(M + "csr_signed_total") == 2
            refused_by = {reason: moved(M + "csr_refused_total", reason=reason)
                          for reason in ("unauthenticated", "node_not_authorized", "bad_csr",
                                         "foreign_trust_domain", "bad_identity", "bad_ttl")}
            assert refused_by == dict.fromkeys(refused_by, 1.0)
    run(main())
