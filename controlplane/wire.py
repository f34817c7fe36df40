"""The discovery messages the ADS server sends, written as protobuf bytes directly.

A change is pushed to every stream, and a thousand streams mostly send the same response:
its bytes are built once (`Response.shared`) and each stream adds only its nonce, instead of
each building a message of copied resources for gRPC to serialize again. The bytes are
exactly what `SerializeToString()` of the same envoy.service.discovery.v3 message gives
(fields in number order; tests/controlplane/ambient/test_response_bytes.py compares them), so a
client cannot tell.

DeltaDiscoveryResponse: system_version_info = 1, resources = 2, type_url = 4, nonce = 5,
removed_resources = 6, control_plane = 7 (a ControlPlane: identifier = 1). Resource:
version = 1, resource = 2 (an Any: type_url = 1, value = 2), name = 3, aliases = 4.

Every response names the control plane in `control_plane.identifier`, as istiod does: JSON
`{"Component": ..., "ID": <host name: the pod's name in a cluster>, "Info": {"version": ...}}`,
so an agent can say which replica and version it follows (`meshnode status`, `version`).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

from core.version import version as meshnode_version

COMPONENT = "meshnode-controlplane"

_SMALL = [bytes((i,)) for i in range(128)]  # the varints of one byte


def _varint(n: int) -> bytes:
    if n < 128:
        return _SMALL[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(number: int, data: bytes) -> bytes:
    """A length-delimited field (a string, bytes or a message); `number` below 16."""
    return _SMALL[number << 3 | 2] + _varint(len(data)) + data


def _text(number: int, text: str) -> bytes:
    return field(number, text.encode()) if text else b""


def resource(name: str, version: str, type_url: str, value: bytes,
             aliases: Iterable[str]) -> bytes:
    """A Resource message (as a field 2 of a response: ready to concatenate)."""
    body = _text(1, type_url) + (field(2, value) if value else b"")
    msg = (_text(1, version) + field(2, body) + _text(3, name)
           + b"".join(field(4, a.encode()) for a in aliases))
    return field(2, msg)


def identifier() -> str:
    """This process's `control_plane.identifier`."""
    return json.dumps({"Component": COMPONENT, "ID": socket.gethostname(),
                       "Info": {"version": meshnode_version()}}, sort_keys=True)


# The removals written lately (a name removed is removed from every stream). Bounded.
_REMOVALS: dict[str, bytes] = {}
REMOVALS_MAX = 8192


def removal(name: str) -> bytes:
    """A removed_resources field."""
    out = _REMOVALS.get(name)
    if out is None:
        if len(_REMOVALS) >= REMOVALS_MAX:
            _REMOVALS.clear()
        out = _REMOVALS[name] = field(6, name.encode())
    return out


class Response:
    """A DeltaDiscoveryResponse ready to send: `SerializeToString()` is its bytes (the gRPC
    handler sends them as they are). The parts without the nonce can be shared between
    streams (`with_nonce`). Reading `resources` parses the bytes (tests and debugging)."""

    __slots__ = ("_head", "_tail", "names", "nonce", "removed_resources", "system_version_info",
                 "type_url")

    def __init__(self, type_url: str, version: str, names: list[str], removed: list[str],
                 resources: bytes, nonce: str = "") -> None:
        self.type_url, self.system_version_info, self.nonce = type_url, version, nonce
        self.names, self.removed_resources = names, removed  # sent / removed names
        self._head = _text(1, version) + resources + _text(4, type_url)
        self._tail = b"".join(map(removal, removed)) + _CONTROL_PLANE

    def with_nonce(self, nonce: str) -> Response:
        """The same response under another nonce (the bytes are shared, not copied)."""
        out = Response.__new__(Response)
        out.type_url, out.system_version_info, out.nonce = (
            self.type_url, self.system_version_info, nonce)
        out.names, out.removed_resources = self.names, self.removed_resources
        out._head, out._tail = self._head, self._tail
        return out

    def SerializeToString(self) -> bytes:  # the protobuf message's method, for gRPC
        return self._head + _text(5, self.nonce) + self._tail

    def message(self) -> Any:
        return discovery_pb2.DeltaDiscoveryResponse.FromString(self.SerializeToString())

    @property
    def resources(self) -> Any:
        return self.message().resources

    def __repr__(self) -> str:
        return (f"Response({self.type_url}, version={self.system_version_info}, "
                f"nonce={self.nonce}, names={self.names}, removed={self.removed_resources})")


def serialize(msg: Any) -> bytes:
    """The gRPC response serializer: a Response's bytes, or any protobuf message's."""
    out: bytes = msg.SerializeToString()
    return out


# The same for every response of this process.
_CONTROL_PLANE = field(7, _text(1, identifier()))
