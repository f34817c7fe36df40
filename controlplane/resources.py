"""What the control plane serves: named, versioned resources per xDS type, and their deltas."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from google.protobuf import any_pb2

from core.mesh import topb
from core.mesh.model import Policy, Service, Workload
from meshpb.istio import authorization_pb2 as authz
from meshpb.istio import workload_pb2 as wl

ADDRESS_TYPE = "type.googleapis.com/istio.workload.Address"
AUTHORIZATION_TYPE = "type.googleapis.com/istio.security.Authorization"
SERVED_TYPES = (ADDRESS_TYPE, AUTHORIZATION_TYPE)


@dataclass(frozen=True)
class Entry:
    """One resource as sent: its Any body, the version the client echoes, lookup aliases."""

    version: str
    body: any_pb2.Any
    aliases: tuple[str, ...] = ()


# type URL -> resource name -> entry
Snapshot = dict[str, dict[str, Entry]]
# type URL -> name of a resource that changed -> the version served before the change (None:
# it was not served); what the store tells a woken ADS stream (controlplane/store.py ChangeFeed)
Changes = dict[str, dict[str, str | None]]


def make_entry(body: any_pb2.Any, aliases: tuple[str, ...] = ()) -> Entry:
    # The version is a content hash, not a counter: a restarted control plane serving the same
    # file gives the same versions, so reconnecting clients are sent nothing they already have.
    digest = hashlib.sha256(body.type_url.encode() + b"\0" + body.value).hexdigest()[:16]
    return Entry(digest, body, aliases)


def pack(msg: wl.Address | authz.Authorization) -> any_pb2.Any:
    out = any_pb2.Any()
    # Deterministic bytes keep content-hash versions stable (map field order otherwise varies).
    out.type_url = f"type.googleapis.com/{msg.DESCRIPTOR.full_name}"
    out.value = msg.SerializeToString(deterministic=True)
    return out


def workload_entry(w: Workload) -> Entry:
    # Aliases: ztunnel looks a workload up on demand as `network/ip`.
    return make_entry(pack(topb.address(w)), tuple(f"{w.network}/{ip}" for ip in w.addresses))


def service_entry(s: Service) -> Entry:
    return make_entry(pack(topb.address(s)), tuple(f"{v.network}/{v.address}" for v in s.vips))


def policy_entry(p: Policy) -> Entry:
    return make_entry(pack(topb.policy(p)))
