"""istio.v1.auth.IstioCertificateService/CreateCertificate over TLS, in shared-node mode.

The agent authenticates as the node (bearer token / clusterid, or a client certificate) and
asks for a workload's identity with `metadata.ImpersonatedIdentity = <spiffe id>`; the CA
grants it only when a pod with that identity runs on the caller's node (istio node_auth.go).
The bearer token is the endpoint's `token_path`, read anew for every request: a meshnode
node token, or a projected service-account token (audience istio-ca) that the kubelet
rotates, which meshnode's control plane (API-server source) and istiod check by TokenReview.
"""

from __future__ import annotations

from typing import Protocol

import grpc
import structlog

from agent.identity.bundle import CertBundle, bundle_from_response
from agent.identity.csr import make_csr
from agent.xds.channel import ControlPlaneEndpoint, call_metadata, secure_channel
from meshpb.istio import ca_pb2

log = structlog.get_logger("identity.ca")

IMPERSONATED_IDENTITY = "ImpersonatedIdentity"
CREATE_CERTIFICATE = "/istio.v1.auth.IstioCertificateService/CreateCertificate"


class CertificateSource(Protocol):
    async def fetch(self, identity: str) -> CertBundle: ...


class CaClient:
    def __init__(self, endpoint: ControlPlaneEndpoint, ttl_seconds: int = 86400,
                 timeout: float = 10.0) -> None:
        self.endpoint = endpoint
        self.ttl_seconds = ttl_seconds
        self.timeout = timeout
        self._channel: grpc.aio.Channel | None = None

    async def fetch(self, identity: str) -> CertBundle:
        """A new key, a CSR, the CA's signature: the bundle for `identity`."""
        kc = make_csr(identity)
        req = ca_pb2.IstioCertificateRequest(csr=kc.csr_pem, validity_duration=self.ttl_seconds)
        req.metadata.update({IMPERSONATED_IDENTITY: identity})
        if self._channel is None:
            # Rebuilt after any failure: picks up a rotated root CA or token.
            self._channel = secure_channel(self.endpoint)
        # The method by path (generated stubs are untyped); the path is the wire contract.
        create = self._channel.unary_unary(
            CREATE_CERTIFICATE, request_serializer=ca_pb2.IstioCertificateRequest.SerializeToString,
            response_deserializer=ca_pb2.IstioCertificateResponse.FromString)
        try:
            resp = await create(req, metadata=call_metadata(self.endpoint), timeout=self.timeout)
        except grpc.aio.AioRpcError:
            await self.close()
            raise
        return bundle_from_response(identity, kc.key, kc.key_pem(), list(resp.cert_chain))

    async def close(self) -> None:
        if self._channel is not None:
            ch, self._channel = self._channel, None
            await ch.close()
