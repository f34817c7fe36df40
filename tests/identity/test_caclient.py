"""CreateCertificate against the real control plane CA over TLS."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from agent.identity.caclient import CaClient
from agent.xds.channel import ControlPlaneEndpoint
from tests.identity.cp import REMOTE, SLEEP, ca_client, control_plane, endpoint
from tests.xds.helpers import Ca, run


def test_fetch_signs_our_key_for_a_local_identity(tmp_path: Path) -> None:
    async def main() -> None:
        cp = control_plane(tmp_path)
        await cp.start()
        ca = ca_client(tmp_path, cp, ttl=600)
        try:
            b = await ca.fetch(SLEEP)
        finally:
            await ca.close()
            await cp.stop()
        leaf = x509.load_pem_x509_certificate(b.chain_pem[0].encode())
        root = x509.load_pem_x509_certificate(b.roots_pem[0].encode())
        leaf.verify_directly_issued_by(root)
        assert root == x509.load_pem_x509_certificate(cp.config.root_cert_path.read_bytes())
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [SLEEP]
        assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
        assert 590 <= b.not_after - b.received_at <= 610   # the TTL we asked for
        assert b.received_at < b.refresh_at < b.received_at + 301
        assert b"PRIVATE KEY" in b.key_pem
    run(main())


@pytest.mark.parametrize(("node", "identity", "code"), [
    ("node1", REMOTE, grpc.StatusCode.PERMISSION_DENIED),   # no such pod on our node
    ("node2", SLEEP, grpc.StatusCode.PERMISSION_DENIED),
])
def test_impersonation_only_for_identities_on_the_node(tmp_path: Path, node: str,
                                                        identity: str,
                                                        code: grpc.StatusCode) -> None:
    async def main() -> None:
        cp = control_plane(tmp_path)
        await cp.start()
        ca = ca_client(tmp_path, cp, node=node)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await ca.fetch(identity)
            assert e.value.code() == code
        finally:
            await ca.close()
            await cp.stop()
    run(main())


def test_without_a_node_token_the_ca_refuses(tmp_path: Path) -> None:
    async def main() -> None:
        cp = control_plane(tmp_path)
        await cp.start()
        ep = endpoint(tmp_path, cp)
        ep.token_path = ""
        ca = CaClient(ep, timeout=3)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await ca.fetch(SLEEP)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            await ca.close()
            await cp.stop()
    run(main())


def test_a_ca_with_an_untrusted_certificate_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        cp = control_plane(tmp_path)
        await cp.start()
        ep = endpoint(tmp_path, cp)
        ca = CaClient(ControlPlaneEndpoint(ep.address, Ca.new().write(tmp_path, "other.pem"),
                                           "localhost", ep.token_path), timeout=3)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await ca.fetch(SLEEP)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await ca.close()
            await cp.stop()
    run(main())
