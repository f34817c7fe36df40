"""ACK/NACK construction for one response, without a network (the client's pure core)."""

from __future__ import annotations

import asyncio
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

from agent.xds.client import MAX_ERRORS_LISTED, DeltaAdsClient
from testing.fake_ads import ADDRESS, AUTHZ, res_policy, res_raw, res_workload, workload
from testing.xds import client


def handle(c: DeltaAdsClient, type_url: str, resources: list[Any], removed: list[str] = (),  # type: ignore[assignment]
           nonce: str = "abc") -> Any:
    resp = discovery_pb2.DeltaDiscoveryResponse(type_url=type_url, resources=resources,
                                                removed_resources=removed, nonce=nonce)
    return asyncio.run(c.handle(resp))


def test_ack_is_nonce_only() -> None:
    c = client()
    req = handle(c, ADDRESS, [res_workload(workload("u1"))], nonce="n-1")
    assert req.type_url == ADDRESS and req.response_nonce == "n-1"
    assert not req.HasField("error_detail") and not req.HasField("node")
    assert not req.resource_names_subscribe and not req.initial_resource_versions


def test_nack_message_lists_names_and_is_capped() -> None:
    c = client()
    bad = [res_raw(f"bad-{i}", ADDRESS, b"\xff") for i in range(MAX_ERRORS_LISTED + 5)]
    req = handle(c, ADDRESS, [*bad, res_workload(workload("good"))])
    msg = req.error_detail.message
    assert msg.startswith("bad-0: cannot decode") and "bad-49: " in msg
    assert "bad-50: " not in msg and msg.endswith("and 5 more")
    assert c.state.workload("good") is not None


def test_unnamed_and_heartbeat_resources() -> None:
    c = client()
    handle(c, ADDRESS, [res_workload(workload("u1"), "v1")])
    heartbeat = discovery_pb2.Resource(name="u1", version="v1")      # no body: TTL refresh
    nameless = res_workload(workload("u2"))
    nameless.name = ""
    req = handle(c, ADDRESS, [heartbeat, nameless])
    assert req.error_detail.message == "resource #1: no name"
    assert c.state.workload("u1") is not None and c.state.workload("u2") is None


def test_policy_removal_and_ready_flag() -> None:
    c = client()
    handle(c, AUTHZ, [res_policy("ns", "p")])
    assert not c.ready()
    handle(c, ADDRESS, [])
    assert c.ready()
    handle(c, AUTHZ, [], removed=["ns/p"])
    assert c.state.policies == {} and c.stats.acks == 3
