"""The ADS server writes its responses' protobuf bytes itself (controlplane/wire.py), sharing
them between streams: they must be exactly what the protobuf library writes for the same
message, whatever the fields hold."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2 as d
from google.protobuf import any_pb2
from hypothesis import given
from hypothesis import strategies as st

from controlplane import wire

texts = st.text(max_size=200)
names = st.lists(st.text(min_size=1, max_size=40), max_size=4)


@given(texts, texts, texts, st.binary(max_size=300), names)
def test_a_resource_is_what_protobuf_writes(name: str, version: str, type_url: str,
                                            value: bytes, aliases: list[str]) -> None:
    want = d.DeltaDiscoveryResponse(resources=[d.Resource(
        name=name, version=version, aliases=aliases,
        resource=any_pb2.Any(type_url=type_url, value=value))]).SerializeToString()
    assert wire.resource(name, version, type_url, value, aliases) == want


@given(st.text(max_size=30), st.integers(0, 2**40), texts, names, names,
       st.lists(st.tuples(texts, st.binary(max_size=2000)), max_size=3))
def test_a_response_is_what_protobuf_writes(type_url: str, version: int, nonce: str,
                                            sent: list[str], removed: list[str],
                                            bodies: list[tuple[str, bytes]]) -> None:
    resources = [d.Resource(name=n, version="v1", resource=any_pb2.Any(type_url=t, value=b))
                 for n, (t, b) in zip(sent, bodies, strict=False)]
    want = d.DeltaDiscoveryResponse(
        type_url=type_url, system_version_info=str(version), nonce=nonce,
        resources=resources, removed_resources=removed,
        control_plane=base_pb2.ControlPlane(identifier=wire.identifier()))
    body = b"".join(wire.resource(r.name, r.version, r.resource.type_url, r.resource.value,
                                  ()) for r in resources)
    shared = wire.Response(type_url, str(version), [r.name for r in resources], removed, body)
    got = shared.with_nonce(nonce)
    assert got.SerializeToString() == want.SerializeToString()
    assert got.message() == want
    assert (got.nonce, got.type_url, got.removed_resources) == (nonce, type_url, removed)
    assert [r.name for r in got.resources] == got.names == [r.name for r in resources]
    assert shared.nonce == ""  # with_nonce makes another response
