"""`istio.v1.auth.IstioCertificateService/CreateCertificate`: sign workload certificates.

Authentication (controlplane/auth.py): a node token, or, when the control plane reads an API
server, a Kubernetes service-account token checked by TokenReview.

Authorization (what istiod's node_auth.go enforces for ztunnel): a node agent (a node token,
or the token of a trusted node account's pod) may obtain identity
`spiffe://<td>/ns/<ns>/sa/<sa>` only if the source has a workload with that namespace and
service account on the caller's node. Any other Kubernetes caller (a workload's own token) is
issued its own identity only. The identity asked for is the request's
`metadata.ImpersonatedIdentity` (ztunnel's shared mode) or else the CSR's URI SAN; when both
are present they must agree, and the CSR must carry exactly that one URI SAN.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from controlplane import metrics, pki
from controlplane.auth import Authenticator, AuthError, Caller
from controlplane.store import ServedStore
from core import pem, spiffe
from meshpb.istio import ca_pb2

log = structlog.get_logger("controlplane.ca")

SERVICE = "istio.v1.auth.IstioCertificateService"
IMPERSONATED_IDENTITY = "ImpersonatedIdentity"


@dataclass
class CaConfig:
    default_ttl: datetime.timedelta = datetime.timedelta(hours=24)
    max_ttl: datetime.timedelta = datetime.timedelta(days=7)


class Refused(Exception):
    """`code`: the gRPC status returned; `reason`: the bounded label of
    meshnode_controlplane_csr_refused_total (controlplane/metrics.py)."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class CertificateService:
    def __init__(self, root: pki.RootCA, store: ServedStore, auth: Authenticator,
                 config: CaConfig | None = None) -> None:
        self.root = root
        self.store = store
        self.auth = auth
        self.config = config or CaConfig()

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "CreateCertificate": grpc.unary_unary_rpc_method_handler(
                self.create_certificate,
                request_deserializer=ca_pb2.IstioCertificateRequest.FromString,
                response_serializer=ca_pb2.IstioCertificateResponse.SerializeToString),
        })

    async def create_certificate(self, request: ca_pb2.IstioCertificateRequest,
                                 context: grpc.aio.ServicerContext[
                                     ca_pb2.IstioCertificateRequest,
                                     ca_pb2.IstioCertificateResponse],
                                 ) -> ca_pb2.IstioCertificateResponse:
        try:
            caller = await self.auth.authenticate(context.invocation_metadata())
        except AuthError as exc:
            metrics.CSR_REFUSED.labels(
                reason=metrics.AUTH_UNAVAILABLE if exc.code == grpc.StatusCode.UNAVAILABLE
                else metrics.UNAUTHENTICATED).inc()
            log.warning("ca_csr_refused", peer=context.peer(), reason=str(exc))
            await context.abort(exc.code, str(exc))
        try:
            chain = self.sign(request, caller)
        except Refused as exc:
            metrics.CSR_REFUSED.labels(reason=exc.reason).inc()
            log.warning("ca_csr_refused", peer=context.peer(), node=caller.node,
                        caller=str(caller), reason=str(exc))
            await context.abort(exc.code, str(exc))
        metrics.CSR_SIGNED.inc()
        return ca_pb2.IstioCertificateResponse(cert_chain=chain)

    def sign(self, request: ca_pb2.IstioCertificateRequest, caller: Caller | str) -> list[str]:
        """Checks and signs; raises Refused with the gRPC status to return. `caller`: who
        asks (a bare node name: that node's agent)."""
        if isinstance(caller, str):
            caller = Caller(node=caller)
        node = caller.node
        csr = _parse_csr(request.csr)
        identity = _requested_identity(request, csr)
        try:
            sid = spiffe.parse_issuable(identity)
        except spiffe.SpiffeError:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT,
                          f"{identity!r} is not spiffe://<trust-domain>/ns/<ns>/sa/<sa>",
                          metrics.BAD_IDENTITY) from None
        td, ns, sa = sid.trust_domain, sid.namespace, sid.service_account
        if td != self.store.trust_domain:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED,
                          f"trust domain {td!r} is not this CA's ({self.store.trust_domain!r})",
                          metrics.FOREIGN_TRUST_DOMAIN)
        own = bool(caller.namespace) and (ns, sa) == (caller.namespace, caller.service_account)
        if not own and not caller.node_agent:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED,
                          f"{caller} is not a node agent: it may be issued its own identity "
                          f"only, not {identity}", metrics.NOT_OWN_IDENTITY)
        if not own and not self.store.has_identity_on_node(ns, sa, node):
            raise Refused(grpc.StatusCode.PERMISSION_DENIED,
                          f"no workload with identity {identity} on node {node!r}",
                          metrics.NODE_NOT_AUTHORIZED)
        ttl = self._ttl(request.validity_duration)
        public_key = csr.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
        leaf = pki.sign_workload(self.root, public_key, identity, ttl)
        log.info("ca_certificate_signed", node=node, caller=str(caller), identity=identity,
                 serial=f"{leaf.serial_number:x}", not_after=leaf.not_valid_after_utc.isoformat())
        # Leaf first, root last, one PEM per element each ending in a newline (what ztunnel
        # expects from istiod).
        return [pem.cert_pem(leaf), self.root.cert_pem]

    def _ttl(self, seconds: int) -> datetime.timedelta:
        if seconds < 0:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "validity_duration is negative",
                          metrics.BAD_TTL)
        wanted = datetime.timedelta(seconds=seconds) if seconds else self.config.default_ttl
        return min(wanted, self.config.max_ttl)


def _parse_csr(text: str) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(text.encode())
    except ValueError:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT,
                      "csr is not a PEM PKCS#10 certificate request", metrics.BAD_CSR) from None
    if not csr.is_signature_valid:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "csr signature does not verify",
                      metrics.BAD_CSR)
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT,
                          f"csr key curve {key.curve.name} is not P-256 or P-384", metrics.BAD_CSR)
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "csr RSA key is under 2048 bits",
                          metrics.BAD_CSR)
    else:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "csr key must be ECDSA or RSA",
                      metrics.BAD_CSR)
    return csr


def _requested_identity(request: ca_pb2.IstioCertificateRequest,
                        csr: x509.CertificateSigningRequest) -> str:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if len(uris) > 1:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "csr has more than one URI SAN",
                      metrics.BAD_CSR)
    fields = request.metadata.fields
    impersonated = (fields[IMPERSONATED_IDENTITY].string_value
                    if IMPERSONATED_IDENTITY in fields else "")
    if impersonated and uris and uris[0] != impersonated:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT,
                      f"csr SAN {uris[0]} differs from ImpersonatedIdentity {impersonated}",
                      metrics.BAD_IDENTITY)
    identity = impersonated or (uris[0] if uris else "")
    if not identity:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "csr has no URI SAN",
                      metrics.BAD_IDENTITY)
    return identity
