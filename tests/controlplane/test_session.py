"""The delta xDS state machine without gRPC: subscriptions, versions, ACK/NACK, reconnect."""

from __future__ import annotations

from typing import Any

from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from controlplane.resources import ADDRESS_TYPE, AUTHORIZATION_TYPE, Entry, Snapshot
from controlplane.resources import entry as served_entry
from controlplane.session import Session

A = ADDRESS_TYPE


def entry(text: str, *aliases: str) -> Entry:
    return served_entry(A, text.encode(), aliases)


def snap(**named: Entry) -> Snapshot:
    return {A: dict(named), AUTHORIZATION_TYPE: {}}


def req(**fields: Any) -> Any:
    fields.setdefault("type_url", A)
    return discovery_pb2.DeltaDiscoveryRequest(**fields)


def one(out: list[Any]) -> Any:
    assert len(out) == 1, out
    return out[0]


def sent(resp: Any) -> dict[str, str]:
    return {r.name: r.version for r in resp.resources}


S1 = snap(a=entry("a1", "/10.0.0.1"), b=entry("b1"))


def test_wildcard_first_request_gets_everything_then_acks_get_nothing() -> None:
    s = Session("p", "n1")
    resp = one(s.on_request(req(), S1, 1))
    assert sent(resp) == {"a": S1[A]["a"].version, "b": S1[A]["b"].version}
    assert resp.nonce and resp.system_version_info == "1" and not resp.removed_resources
    assert list(resp.resources[0].aliases) == ["/10.0.0.1"]
    assert s.on_request(req(response_nonce=resp.nonce), S1, 1) == []
    assert s.types[A].acks == 1


def test_first_request_with_nothing_to_send_still_gets_a_response() -> None:
    s = Session("p", "n1")
    resp = one(s.on_request(req(type_url=AUTHORIZATION_TYPE), S1, 1))
    assert not resp.resources and not resp.removed_resources and resp.nonce


def test_push_sends_only_the_delta() -> None:
    s = Session("p", "n1")
    s.on_request(req(), S1, 1)
    s2 = snap(a=entry("a2"), c=entry("c1"))
    resp = one(s.on_snapshot(s2, 2))
    assert sorted(sent(resp)) == ["a", "c"]
    assert list(resp.removed_resources) == ["b"]
    assert s.on_snapshot(s2, 2) == []   # nothing new for this client


def test_nack_is_counted_and_not_answered_nor_resent() -> None:
    s = Session("p", "n1")
    resp = one(s.on_request(req(), S1, 1))
    nack = req(response_nonce=resp.nonce,
               error_detail=status_pb2.Status(code=3, message="a: bad bytes"))
    assert s.on_request(nack, S1, 1) == []
    assert s.types[A].nacks == 1
    assert s.on_snapshot(S1, 2) == []


def test_stale_nonce_is_not_an_ack_but_subscriptions_still_count() -> None:
    s = Session("p", "n1")
    s.on_request(req(resource_names_subscribe=["a"]), S1, 1)
    resp = one(s.on_request(req(response_nonce="old", resource_names_subscribe=["b"]), S1, 1))
    assert s.types[A].acks == 0
    assert sorted(sent(resp)) == ["b"]


def test_reconnect_with_initial_versions_sends_changes_and_removals_only() -> None:
    s = Session("p", "n1")
    have = {"a": S1[A]["a"].version, "b": "stale", "gone": "v0"}
    resp = one(s.on_request(req(initial_resource_versions=have), S1, 7))
    assert sorted(sent(resp)) == ["b"]
    assert list(resp.removed_resources) == ["gone"]


def test_explicit_subscription_by_name_and_alias_and_missing_name() -> None:
    s = Session("p", "n1")
    # ztunnel's on-demand start: subscribe and unsubscribe '*' -> subscribed to nothing.
    resp = one(s.on_request(req(resource_names_subscribe=["*"],
                                resource_names_unsubscribe=["*"]), S1, 1))
    assert not resp.resources and not s.types[A].wildcard
    resp = one(s.on_request(req(resource_names_subscribe=["/10.0.0.1", "/10.9.9.9"]), S1, 1))
    assert sorted(sent(resp)) == ["a"]                      # the alias resolves to its name
    assert list(resp.removed_resources) == ["/10.9.9.9"]    # the missing one is "removed"
    # b is not subscribed: its changes are not pushed; a's are.
    resp = one(s.on_snapshot(snap(a=entry("a2"), b=entry("b2")), 2))
    assert sorted(sent(resp)) == ["a"]


def test_resubscribing_a_held_name_resends_it() -> None:
    s = Session("p", "n1")
    s.on_request(req(resource_names_subscribe=["a"]), S1, 1)
    resp = one(s.on_request(req(resource_names_subscribe=["a"]), S1, 1))
    assert sorted(sent(resp)) == ["a"]


def test_unsubscribed_names_are_forgotten() -> None:
    s = Session("p", "n1")
    s.on_request(req(resource_names_subscribe=["a", "b"]), S1, 1)
    resp = one(s.on_request(req(resource_names_unsubscribe=["b"]), S1, 1))
    assert not resp.resources and not resp.removed_resources
    assert "b" not in s.types[A].known
    assert s.on_snapshot(snap(a=S1[A]["a"], b=entry("b2")), 2) == []


def test_unknown_type_is_ignored() -> None:
    s = Session("p", "n1")
    assert s.on_request(req(type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster"),
                        S1, 1) == []
