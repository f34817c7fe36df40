"""The CA over real gRPC + TLS: signing, node authorization, bad CSRs, TTL caps."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import struct_pb2

from controlplane import nodeauth
from meshpb.istio import ca_pb2, ca_pb2_grpc
from testing import mesh_manifests as mm
from tests.controlplane.harness import (
    EXAMPLE_FILE,
    auth,
    channel,
    control_plane,
    eventually,
    example,
    run,
)

SLEEP_ID = "spiffe://cluster.local/ns/default/sa/sleep"   # sleep runs on node1 only
ECHO_ID = "spiffe://cluster.local/ns/default/sa/echo"     # echo runs on node1 and node2


def make_csr(*uris: str, key: Any = None) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if uris:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(u) for u in uris]), critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def request(csr: str, ttl: int = 3600, impersonate: str = "") -> ca_pb2.IstioCertificateRequest:
    md = struct_pb2.Struct()
    if impersonate:
        md.update({"ImpersonatedIdentity": impersonate})
    return ca_pb2.IstioCertificateRequest(csr=csr, validity_duration=ttl, metadata=md)


async def call(cp: Any, req: ca_pb2.IstioCertificateRequest, node: str = "node1",
               token: str | None = None) -> ca_pb2.IstioCertificateResponse:
    async with channel(cp) as ch:
        stub = ca_pb2_grpc.IstioCertificateServiceStub(ch)
        tok = token if token is not None else cp.node_token(node)
        resp: ca_pb2.IstioCertificateResponse = await stub.CreateCertificate(
            req, metadata=auth(tok), timeout=5)
        return resp


async def refused(cp: Any, req: ca_pb2.IstioCertificateRequest, node: str = "node1",
                  token: str | None = None) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call(cp, req, node, token)
    return exc.value


def test_signs_a_workload_on_the_callers_node(tmp_path: Path) -> None:
    async def main() -> None:
        async with control_plane(tmp_path) as cp:
            key = ec.generate_private_key(ec.SECP256R1())
            resp = await call(cp, request(make_csr(SLEEP_ID, key=key), ttl=3600,
                                          impersonate=SLEEP_ID))
            assert len(resp.cert_chain) == 2
            assert all(p.endswith("\n") for p in resp.cert_chain)
            leaf = x509.load_pem_x509_certificate(resp.cert_chain[0].encode())
            root = x509.load_pem_x509_certificate(resp.cert_chain[1].encode())
            assert root == cp.root.cert
            leaf.verify_directly_issued_by(root)
            assert leaf.public_key() == key.public_key()
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            assert san.critical
            assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [SLEEP_ID]
            assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
            life = leaf.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
            assert datetime.timedelta(minutes=55) < life <= datetime.timedelta(hours=1)
            # No ImpersonatedIdentity: the CSR's SAN names the identity.
            await call(cp, request(make_csr(ECHO_ID)), node="node2")
    run(main())


def test_ttl_is_capped_and_defaulted(tmp_path: Path) -> None:
    async def main() -> None:
        async with control_plane(tmp_path, max_cert_ttl=datetime.timedelta(hours=2)) as cp:
            for ttl, hours in ((90 * 86400, 2), (0, 2)):   # default 24h, capped at 2h too
                resp = await call(cp, request(make_csr(SLEEP_ID), ttl=ttl))
                leaf = x509.load_pem_x509_certificate(resp.cert_chain[0].encode())
                life = leaf.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
                assert life <= datetime.timedelta(hours=hours)
                assert life > datetime.timedelta(hours=hours) - datetime.timedelta(minutes=1)
    run(main())


def test_refuses_an_identity_not_on_the_callers_node(tmp_path: Path) -> None:
    async def main() -> None:
        async with control_plane(tmp_path) as cp:
            err = await refused(cp, request(make_csr(SLEEP_ID), impersonate=SLEEP_ID),
                                node="node2")
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "node2" in (err.details() or "")
            # A node that runs nothing at all.
            err = await refused(cp, request(make_csr(ECHO_ID)), node="node9")
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            # Another trust domain is never ours to sign.
            other = "spiffe://evil.org/ns/default/sa/sleep"
            err = await refused(cp, request(make_csr(other)))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    run(main())


def test_node_authorization_follows_the_manifests(tmp_path: Path) -> None:
    async def main() -> None:
        async with control_plane(tmp_path) as cp:
            await call(cp, request(make_csr(SLEEP_ID)), node="node1")
            mm.write(tmp_path / "manifests", EXAMPLE_FILE, *example(sleep_node="node2"))
            await eventually(lambda: cp.store.has_identity_on_node("default", "sleep", "node2"))
            err = await refused(cp, request(make_csr(SLEEP_ID)), node="node1")
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            await call(cp, request(make_csr(SLEEP_ID)), node="node2")
    run(main())


@pytest.mark.parametrize("token", ["", "garbage", "forged"])
def test_refuses_a_caller_without_a_valid_node_token(tmp_path: Path, token: str) -> None:
    async def main() -> None:
        async with control_plane(tmp_path) as cp:
            tok = nodeauth.mint(b"x" * 32, "node1") if token == "forged" else token
            err = await refused(cp, request(make_csr(SLEEP_ID)), token=tok)
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    run(main())


def _tampered_csr() -> str:
    # A valid CSR for SLEEP_ID whose signed bytes are altered: the signature must not verify.
    der = bytearray(x509.load_pem_x509_csr(make_csr(SLEEP_ID).encode()).public_bytes(
        serialization.Encoding.DER))
    i = der.find(SLEEP_ID.encode()) + len("spiffe://")
    der[i] ^= 0x01
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()


BAD_CSRS = {
    "not-pem": ("hello", "", "not a PEM PKCS#10"),
    "bad-signature": (_tampered_csr(), "", "signature"),
    "two-uri-sans": (make_csr(SLEEP_ID, ECHO_ID), "", "more than one URI SAN"),
    "no-identity": (make_csr(), "", "no URI SAN"),
    "san-vs-impersonation": (make_csr(ECHO_ID), SLEEP_ID, "differs"),
    "not-spiffe": (make_csr("https://example.com/x"), "", "is not spiffe://"),
    "weak-curve": (make_csr(SLEEP_ID, key=ec.generate_private_key(ec.SECP256K1())), "",
                   "curve"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSRS))
def test_refuses_bad_csrs(tmp_path: Path, case: str) -> None:
    csr, impersonate, message = BAD_CSRS[case]

    async def main() -> None:
        async with control_plane(tmp_path) as cp:
            err = await refused(cp, request(csr, impersonate=impersonate))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in (err.details() or "")
    run(main())
