"""The agent's Delta ADS client and meshnode's traffic types, against a scripted TLS gRPC
server (testing/fake_ads.py): undecodable or inconsistent resources are NACKed by name while
the good ones of the response are applied, removals reach XdsState, traffic responses alone
do not make the agent ready, and a reconnect echoes the held traffic versions."""

from __future__ import annotations

from pathlib import Path

import grpc

from agent.xds.client import DeltaAdsClient
from core.mesh import trafficpb
from core.mesh.traffic import (
    EgressPolicy,
    L4Route,
    OutboundMode,
    RouteDestination,
    RouteKind,
    ServiceTraffic,
)
from testing.fake_ads import ADDRESS, AUTHZ, ScriptedAds, res_raw
from tests.xds.test_protocol import go, initial

ST = trafficpb.SERVICE_TRAFFIC_TYPE
EG = trafficpb.EGRESS_POLICY_TYPE
GOOD = ServiceTraffic("shop/web.shop.svc.cluster.local", routes=(L4Route(RouteKind.TCP, (
    RouteDestination("shop/web.shop.svc.cluster.local", weight=100),)),))


def test_bad_traffic_resources_are_nacked_by_name_and_the_good_applied(tmp_path: Path) -> None:
    async def body(ads: ScriptedAds, client: DeltaAdsClient) -> None:
        s, reqs = await initial(ads)
        assert list(reqs[ST].resource_names_subscribe) == ["*"]
        other = ServiceTraffic("shop/other.shop.svc.cluster.local")
        nonce = s.send(ST, [
            res_raw(GOOD.service, ST, trafficpb.serialize(GOOD), "g1"),
            res_raw("shop/garbage", ST, b"\xff\xff"),                     # undecodable
            res_raw("shop/renamed", ST, trafficpb.serialize(other)),      # name mismatch
            res_raw("shop/x", EG, trafficpb.serialize(EgressPolicy("shop", "x"))),  # type
        ])
        nack = await s.recv()
        assert nack.response_nonce == nonce and nack.HasField("error_detail")
        msg = nack.error_detail.message
        assert "shop/garbage: cannot decode meshnode.traffic.v1.ServiceTraffic" in msg, msg
        assert "shop/renamed: service 'shop/other.shop.svc.cluster.local' differs" in msg, msg
        assert "shop/x: resource of type" in msg, msg
        assert GOOD.service + ":" not in msg
        assert nack.error_detail.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        st = client.state
        assert st.traffic[GOOD.service].routes == GOOD.routes   # the good one applied
        assert st.traffic[GOOD.service].version == "g1"
        assert set(st.traffic) == {GOOD.service}
        # traffic responses alone do not make the agent ready: Istio's types do
        assert not client.ready()
        for t in (ADDRESS, AUTHZ):
            n = s.send(t, [])
            assert (await s.recv()).response_nonce == n
        assert await client.wait_ready(2)
        # an egress policy, then removals of both
        n = s.send(EG, [res_raw("mesh default", EG, trafficpb.serialize(
            EgressPolicy("", mode=OutboundMode.REGISTRY_ONLY)), "e1")])
        ack = await s.recv()
        assert ack.response_nonce == n and not ack.HasField("error_detail")
        assert st.egress["mesh default"].mode == OutboundMode.REGISTRY_ONLY
        n = s.send(ST, [], removed=[GOOD.service])
        assert (await s.recv()).response_nonce == n
        assert st.traffic == {}
        assert client.stats.nacks == 1
    go(tmp_path, body)


def test_reconnect_echoes_held_traffic_versions(tmp_path: Path) -> None:
    async def body(ads: ScriptedAds, client: DeltaAdsClient) -> None:
        s, _ = await initial(ads)
        s.send(ST, [res_raw(GOOD.service, ST, trafficpb.serialize(GOOD), "g7")])
        await s.recv()
        s.end()  # the server ends the stream: the client reconnects
        _, reqs = await initial(ads)
        assert dict(reqs[ST].initial_resource_versions) == {GOOD.service: "g7"}
        assert dict(reqs[EG].initial_resource_versions) == {}
        assert client.state.traffic[GOOD.service].version == "g7"  # kept while away
    go(tmp_path, body)
