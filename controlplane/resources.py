"""What the control plane serves: named, versioned resources per xDS type, and their deltas."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass

from google.protobuf import any_pb2

from core.mesh import topb, trafficpb
from core.mesh.model import Policy, Service, Workload
from meshpb.istio import authorization_pb2 as authz
from meshpb.istio import workload_pb2 as wl

ADDRESS_TYPE = "type.googleapis.com/istio.workload.Address"
AUTHORIZATION_TYPE = "type.googleapis.com/istio.security.Authorization"
# meshnode's own types (proto/meshnode/traffic.proto): only clients that subscribe to them
# get them (a ztunnel asks for Istio's two types only, and is sent nothing new).
SERVED_TYPES = (ADDRESS_TYPE, AUTHORIZATION_TYPE, *trafficpb.TRAFFIC_TYPES)


@dataclass(frozen=True, slots=True)
class Entry:
    """One resource as sent: its body (an Any's type URL and serialized message), the version
    the client echoes, lookup aliases. The body is kept as bytes, not as an Any message: a
    protobuf message object costs a kilobyte more per resource (its own arena), and a
    hundred thousand are kept."""

    version: str
    type_url: str
    value: bytes
    aliases: tuple[str, ...] = ()

    @property
    def body(self) -> any_pb2.Any:
        return any_pb2.Any(type_url=self.type_url, value=self.value)


# type URL -> resource name -> entry
Snapshot = dict[str, dict[str, Entry]]
# type URL -> name of a resource that changed -> the version served before the change (None:
# it was not served); what the store tells a woken ADS stream (controlplane/store.py ChangeFeed)
Changes = dict[str, dict[str, str | None]]


def entry(type_url: str, value: bytes, aliases: tuple[str, ...] = ()) -> Entry:
    # The version is a content hash, not a counter: a restarted control plane serving the same
    # file gives the same versions, so reconnecting clients are sent nothing they already have.
    digest = hashlib.sha256(type_url.encode() + b"\0" + value).hexdigest()[:16]
    return Entry(digest, sys.intern(type_url), value, aliases)


def _body(msg: wl.Address | authz.Authorization | trafficpb.Message) -> tuple[str, bytes]:
    # Deterministic bytes keep content-hash versions stable (map field order otherwise varies).
    return (f"type.googleapis.com/{msg.DESCRIPTOR.full_name}",
            msg.SerializeToString(deterministic=True))


def workload_entry(w: Workload, value: bytes | None = None) -> Entry:
    """`value`: `w`'s Address bytes if already made (the ambient index keeps them: the entry
    then shares that one bytes object)."""
    # Aliases: ztunnel looks a workload up on demand as `network/ip`.
    aliases = tuple(f"{w.network}/{ip}" for ip in w.addresses)
    if value is None:
        return entry(*_body(topb.address(w)), aliases)
    return entry(ADDRESS_TYPE, value, aliases)  # an Address's Any type URL is the xDS type's


def service_entry(s: Service) -> Entry:
    return entry(*_body(topb.address(s)), tuple(f"{v.network}/{v.address}" for v in s.vips))


def policy_entry(p: Policy) -> Entry:
    return entry(*_body(topb.policy(p)))


def traffic_entry(rec: trafficpb.TrafficRecord) -> tuple[str, str, Entry]:
    """(type URL, resource name, entry) of a traffic management record."""
    msg = trafficpb.to_proto(rec)
    return (f"type.googleapis.com/{msg.DESCRIPTOR.full_name}", trafficpb.resource_name(rec),
            entry(*_body(msg)))
