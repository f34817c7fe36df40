"""The discovery client against a real TLS gRPC server on localhost, scripted per message."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.xds.channel import ControlPlaneEndpoint
from agent.xds.client import TYPES, DeltaAdsClient, XdsClientConfig
from agent.xds.node import NodeInfo
from core.backoff import Backoff
from core.mesh.trafficpb import TRAFFIC_TYPES
from testing.fake_ads import (
    ADDRESS,
    AUTHZ,
    ScriptedAds,
    Stream,
    res_policy,
    res_raw,
    res_service,
    res_workload,
    start_server,
    workload,
)
from tests.xds.helpers import Ca, run, until

UID_A = "Kubernetes//Pod/default/a"
UID_B = "Kubernetes//Pod/default/b"
UID_C = "Kubernetes//Pod/default/c"


@asynccontextmanager
async def harness(tmp: Path, root: Ca | None = None, backoff: Backoff | None = None
                  ) -> AsyncIterator[tuple[ScriptedAds, DeltaAdsClient, asyncio.Task[None]]]:
    """A scripted server signed by one CA; a client trusting `root` (default: that CA)."""
    ca = Ca.new()
    key, cert = ca.server_cert("localhost")
    ads = ScriptedAds()
    server, port = await start_server(ads, key, cert)
    (tmp / "token").write_text("node-token-1\n")
    ep = ControlPlaneEndpoint(address=f"127.0.0.1:{port}", root_ca=(root or ca).write(tmp),
                              server_name="localhost", token_path=str(tmp / "token"),
                              cluster_id="c1")
    client = DeltaAdsClient(XdsClientConfig(ep, NodeInfo(node_name="node1", instance_ip="10.9.0.1",
                                                         pod_name="meshnode-x",
                                                         pod_namespace="meshnode-system")),
                            backoff=backoff or Backoff(0.01, 0.05))
    task = asyncio.create_task(client.run())
    try:
        yield ads, client, task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop(None)


async def initial(ads: ScriptedAds) -> tuple[Stream, dict[str, Any]]:
    """The stream's first request of every type: traffic management's, then Istio's two.
    This fake answers Istio's types only, as istiod does."""
    s = await ads.next_stream()
    reqs = {}
    for _ in range(len(TYPES)):
        r = await s.recv()
        reqs[r.type_url] = r
    return s, reqs


async def sync(ads: ScriptedAds, addresses: list[Any], policies: list[Any]) -> Stream:
    """Connect, answer both initial requests, expect both ACKs."""
    s, _ = await initial(ads)
    n1 = s.send(ADDRESS, addresses)
    assert (await s.recv()).response_nonce == n1
    n2 = s.send(AUTHZ, policies)
    assert (await s.recv()).response_nonce == n2
    return s


def go(tmp: Path, body: Callable[[ScriptedAds, DeltaAdsClient], Coroutine[Any, Any, None]],
       **kw: Any) -> None:
    async def main() -> None:
        async with harness(tmp, **kw) as (ads, client, _):
            await body(ads, client)
    run(main())


def test_initial_requests_carry_node_wildcard_and_credentials(tmp_path: Path) -> None:
    async def body(ads: ScriptedAds, client: DeltaAdsClient) -> None:
        s, reqs = await initial(ads)
        assert list(reqs) == [*TRAFFIC_TYPES, ADDRESS, AUTHZ]
        for r in reqs.values():
            assert list(r.resource_names_subscribe) == ["*"]
            assert r.node.id == "ztunnel~10.9.0.1~meshnode-x.meshnode-system~" \
                                "meshnode-system.svc.cluster.local"
            md = dict(r.node.metadata.fields)
            assert md["NODE_NAME"].string_value == "node1"
            assert md["INSTANCE_IPS"].string_value == "10.9.0.1"
            assert md["CLUSTER_ID"].string_value == "Kubernetes"
            assert md["ISTIO_VERSION"].string_value
            assert not r.response_nonce and not r.initial_resource_versions
        assert s.metadata["authorization"] == "Bearer node-token-1"
        assert s.metadata["clusterid"] == "c1"
    go(tmp_path, body)


def test_ack_echoes_nonce_and_ready_needs_both_types(tmp_path: Path) -> None:
    async def body(ads: ScriptedAds, client: DeltaAdsClient) -> None:
        s, _ = await initial(ads)
        nonce = s.send(ADDRESS, [res_workload(workload(UID_A, services={"default/a.svc": 80})),
                                 res_service("default", "a.svc", b"\x0a\x60\x00\x01")])
        ack = await s.recv()
        assert ack.type_url == ADDRESS and ack.response_nonce == nonce
        assert not ack.HasField("error_detail") and not ack.HasField("node")
        assert not client.ready()
        assert client.state.workload_by_ip("10.0.0.1").uid == UID_A  # type: ignore[union-attr]
        nonce = s.send(AUTHZ, [res_policy("default", "deny-9090")])
        ack = await s.recv()
        assert ack.response_nonce == nonce and not ack.HasField("error_detail")
        assert await client.wait_ready(2)
        assert client.state.policy("default/deny-9090") is not None
        assert [w.uid for w in client.state.endpoints("default/a.svc")] == [UID_A]
        assert client.state.service_by_vip("10.96.0.1").hostname == "a.svc"  # type: ignore[union-attr]
        assert client.stats.acks == 2 and client.stats.nacks == 0
    go(tmp_path, body)


def test_nack_names_each_bad_resource_and_applies_the_good_ones(tmp_path: Path) -> None:
    async def body(ads: ScriptedAds, client: DeltaAdsClient) -> None:
        s = await sync(ads, [res_workload(workload(UID_B, ip=b"\x0a\x00\x00\x02"), "b1")], [])
        assert await client.wait_ready(2)
        bad_ip = workload(UID_C)
        bad_ip.addresses[:] = [b"\x01\x02\x03"]
        nonce = s.send(ADDRESS, [
            res_workload(workload(UID_A), "a1"),                         # good
            res_raw("bogus-bytes", ADDRESS, b"\xff"),                    # undecodable
            res_raw("wrong-type", AUTHZ, b""),                           # not an Address
            res_workload(bad_ip),                                        # 3-byte IP
            res_workload(workload(UID_B, ip=b"\x0a\x00\x00\x03"), "b2"),  # update, but twice:
            res_workload(workload(UID_B, ip=b"\x0a\x00\x00\x04"), "b3"),  # ambiguous
        ])
        nack = await s.recv()
        assert nack.response_nonce == nonce and nack.HasField("error_detail")
        msg = nack.error_detail.message
        for name in ("bogus-bytes", "wrong-type", UID_C, UID_B):
            assert f"{name}: " in msg, msg
        assert UID_A + ":" not in msg
        assert nack.error_detail.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        st = client.state
        assert st.workload(UID_A) is not None                   # good one applied
        assert st.workload(UID_C) is None
        assert st.workload(UID_B).version == "b1"                 # type: ignore[union-attr]
        assert st.workload_by_ip("10.0.0.2").uid == UID_B         # type: ignore[union-attr]
        assert client.ready() and client.stats.nacks == 1
        # The stream goes on: the next good response is ACKed.
        nonce = s.send(ADDRESS, [], removed=[UID_A])
        ack = await s.recv()
        assert ack.response_nonce == nonce and not ack.HasField("error_detail")
        assert st.workload(UID_A) is None and st.workload_by_ip("10.0.0.1") is None
    go(tmp_path, body)


def test_unknown_type_is_nacked_and_first_response_gate(tmp_path: Path) -> None:
    async def body(ads: ScriptedAds, client: DeltaAdsClient) -> None:
        s, _ = await initial(ads)
        nonce = s.send("type.googleapis.com/envoy.config.cluster.v3.Cluster", [])
        nack = await s.recv()
        assert nack.response_nonce == nonce and "unknown type_url" in nack.error_detail.message
        s.send(ADDRESS, [])
        await s.recv()
        assert not client.ready()          # no Authorization response yet
        s.send(AUTHZ, [res_raw("default/x", AUTHZ, b"\xff")])  # first one partly bad
        nack = await s.recv()
        assert "default/x: " in nack.error_detail.message
        assert await client.wait_ready(2)  # empty-but-applied state is usable
    go(tmp_path, body)


def test_reconnect_echoes_held_versions_and_applies_removals(tmp_path: Path) -> None:
    async def body(ads: ScriptedAds, client: DeltaAdsClient) -> None:
        s = await sync(ads, [res_workload(workload(UID_A), "a1"),
                             res_workload(workload(UID_B, ip=b"\x0a\x00\x00\x02"), "b1"),
                             res_raw("bad", ADDRESS, b"\xff")],
                       [res_policy("default", "p", version="p1")])
        assert await client.wait_ready(2)
        s.end()                                   # clean close (max connection age)
        s2, reqs = await initial(ads)
        assert dict(reqs[ADDRESS].initial_resource_versions) == {UID_A: "a1", UID_B: "b1"}
        assert dict(reqs[AUTHZ].initial_resource_versions) == {"default/p": "p1"}
        assert reqs[ADDRESS].node.id and not reqs[ADDRESS].response_nonce
        assert client.ready()                     # last good state stayed in force
        # What the server removed while we were away comes back as removals.
        n = s2.send(ADDRESS, [], removed=[UID_B])
        assert (await s2.recv()).response_nonce == n
        assert client.state.workload(UID_B) is None and client.state.workload(UID_A)
        assert client.stats.connects == 2
    go(tmp_path, body)


def test_aborted_streams_back_off_keep_state_and_a_good_stream_resets_backoff(
        tmp_path: Path) -> None:
    async def body(ads: ScriptedAds, client: DeltaAdsClient) -> None:
        loop = asyncio.get_running_loop()
        s = await sync(ads, [res_workload(workload(UID_A))], [])
        assert await client.wait_ready(2)
        ads.reject = grpc.StatusCode.UNAVAILABLE
        s.abort()
        await until(lambda: ads.count >= 5, what="client keeps retrying")
        assert client.backoff.attempts >= 4               # growing, not reset on failures
        # The scripted status, unless gRPC lost it to a write racing the close.
        assert "UNAVAILABLE" in client.stats.last_error or \
            "closed by the control plane" in client.stats.last_error, client.stats.last_error
        assert client.ready() and client.state.workload(UID_A) is not None
        ads.reject = None
        s2, reqs = await initial(ads)
        assert UID_A in reqs[ADDRESS].initial_resource_versions
        s2.send(ADDRESS, [])
        await s2.recv()
        # This stream delivered: when it ends, the retry comes after the initial delay,
        # not after the ~0.8 s the failed attempts had grown to.
        s2.end()
        t0 = loop.time()
        await ads.next_stream()
        assert loop.time() - t0 < 0.3
    go(tmp_path, body, backoff=Backoff(0.05, 5.0))


def test_backoff_delays_grow_between_failed_attempts(tmp_path: Path) -> None:
    times: list[float] = []

    async def main() -> None:
        async with harness(tmp_path, backoff=Backoff(0.05, 1.0)) as (ads, client, _):
            ads.reject = grpc.StatusCode.UNAVAILABLE
            loop = asyncio.get_running_loop()
            seen = 0
            while len(times) < 5:
                if ads.count > seen:
                    seen = ads.count
                    times.append(loop.time())
                await asyncio.sleep(0.002)
            assert not client.ready()
    run(main())
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Equal jitter: the n-th delay is within [d/2, d] of d = 0.05 * 2^n.
    for n, gap in enumerate(gaps):
        d = 0.05 * 2 ** n
        assert d / 2 - 0.01 < gap < d + 0.15, gaps


def test_server_with_an_untrusted_certificate_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with harness(tmp_path, root=Ca.new("someone else")) as (ads, client, _):
            await until(lambda: client.stats.last_error != "", what="a TLS failure")
            await asyncio.sleep(0.2)
            assert ads.count == 0            # the handshake never got to the RPC
            assert not client.ready() and client.stats.connects == 0
    run(main())


@pytest.mark.parametrize("policy_first", [False, True])
def test_ready_waits_for_both_types_in_any_order(tmp_path: Path, policy_first: bool) -> None:
    async def body(ads: ScriptedAds, client: DeltaAdsClient) -> None:
        s, _ = await initial(ads)
        order = [AUTHZ, ADDRESS] if policy_first else [ADDRESS, AUTHZ]
        s.send(order[0], [])
        await s.recv()
        assert not await client.wait_ready(0.1)
        s.send(order[1], [])
        await s.recv()
        assert await client.wait_ready(1)
    go(tmp_path, body)
