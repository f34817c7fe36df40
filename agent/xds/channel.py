"""gRPC channel and call credentials to the control plane (discovery and CA share them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc

from core.mesh.model import DEFAULT_CLUSTER

# ztunnel's limit: a full push of a large mesh is one message.
MAX_MESSAGE_BYTES = 200 * 1024 * 1024


@dataclass
class ControlPlaneEndpoint:
    """Where the control plane is and how to trust and authenticate to it.

    `root_ca` verifies the server (there is no insecure mode: the stream carries identities).
    `token_path` is read on every connect, so a rotated projected token is picked up; the
    node's credentials can also be a client certificate (`client_cert`/`client_key`).
    """

    address: str                      # host:port
    root_ca: str                      # PEM file
    server_name: str = ""             # expected SAN when it differs from the address's host
    token_path: str = ""              # bearer token file (istio: audience istio-ca)
    cluster_id: str = DEFAULT_CLUSTER  # sent as `clusterid`, as istio's agents do
    client_cert: str = ""             # PEM chain file, for control planes that want mTLS
    client_key: str = ""
    headers: dict[str, str] = field(default_factory=dict)   # extra metadata (XDS_HEADER_*)


def secure_channel(ep: ControlPlaneEndpoint) -> grpc.aio.Channel:
    root = Path(ep.root_ca).read_bytes()
    key = Path(ep.client_key).read_bytes() if ep.client_key else None
    chain = Path(ep.client_cert).read_bytes() if ep.client_cert else None
    creds = grpc.ssl_channel_credentials(root_certificates=root, private_key=key,
                                         certificate_chain=chain)
    options: list[tuple[str, str | int]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        # Keepalive so a silently dead control plane is noticed and we reconnect.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    if ep.server_name:
        options.append(("grpc.ssl_target_name_override", ep.server_name))
    return grpc.aio.secure_channel(ep.address, creds, options=options)


def call_metadata(ep: ControlPlaneEndpoint) -> list[tuple[str, str]]:
    md = [(k.lower(), v) for k, v in ep.headers.items()]
    if ep.cluster_id:
        md.append(("clusterid", ep.cluster_id))
    if ep.token_path:
        token = Path(ep.token_path).read_text().strip()
        md.append(("authorization", f"Bearer {token}"))
    return md
