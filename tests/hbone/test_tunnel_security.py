"""Who may tunnel: SPIFFE identities checked both ways, L4 policy on the inbound side, and
certificate rotation without a restart."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from typing import Any

import pytest
import structlog
from cryptography import x509
from prometheus_client import REGISTRY

from core.mesh import model
from core.spiffe import parse
from proxy import authz
from proxy.hbone import HboneError
from proxy.identity.certs import CertBundle
from tests.hbone.conftest import CLIENT_ID, SERVER_ID, Mesh, echo
from tests.hbone.pki import CA


class CountingEcho:
    """The app: echoes, and counts connections (a refused tunnel must never reach it)."""

    def __init__(self) -> None:
        self.connections = 0

    async def __call__(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        await echo(r, w)


async def _refused(mesh: Mesh) -> None:
    """The app's connection is reset and nothing comes back."""
    r, w = await mesh.connect()
    w.write(b"anyone?")
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(r.read(), 5)
    w.close()


async def _works(mesh: Mesh, msg: bytes = b"ping") -> None:
    r, w = await mesh.connect()
    w.write(msg)
    assert await asyncio.wait_for(r.readexactly(len(msg)), 5) == msg
    w.close()


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_wrong_server_identity_is_refused(ca: CA, run: Any) -> None:
    app = CountingEcho()

    async def body() -> None:
        mesh = await Mesh(ca, app).start()
        mesh.expect = parse("spiffe://cluster.local/ns/b/sa/someone-else")
        try:
            await _refused(mesh)
        finally:
            await mesh.stop()
        assert app.connections == 0
        assert isinstance(mesh.outbound_errors[0], HboneError)
        assert "not the expected" in str(mesh.outbound_errors[0])
    run(body())


def test_server_from_untrusted_root_is_refused(ca: CA, run: Any) -> None:
    app = CountingEcho()

    async def body() -> None:
        mesh = await Mesh(ca, app).start()
        rogue = CA.new("rogue")
        # Same SPIFFE ID, same roots offered to the client, but signed by another CA.
        mesh.server_certs.put(rogue.leaf(str(SERVER_ID), roots=ca.pem))
        try:
            await _refused(mesh)
        finally:
            await mesh.stop()
        assert app.connections == 0
        assert "certificate verify failed" in str(mesh.outbound_errors[0])
    run(body())


def test_client_from_untrusted_root_is_refused(ca: CA, run: Any) -> None:
    app = CountingEcho()

    async def body() -> None:
        mesh = await Mesh(ca, app).start()
        rogue = CA.new("rogue")
        mesh.client_certs.put(rogue.leaf(str(CLIENT_ID), roots=ca.pem))
        before = _sample("meshnode_hbone_handshake_failures_total", direction="inbound",
                         reason="handshake")
        try:
            await _refused(mesh)
        finally:
            await mesh.stop()
        assert app.connections == 0
        assert _sample("meshnode_hbone_handshake_failures_total", direction="inbound",
                       reason="handshake") == before + 1
    run(body())


def test_client_cert_that_is_not_an_svid_is_refused(ca: CA, run: Any) -> None:
    """Chain-valid, but two URI SANs: not an X.509 SVID, so no identity to authorize."""
    app = CountingEcho()

    async def body() -> None:
        mesh = await Mesh(ca, app).start()
        key, chain = ca.leaf_pems(str(CLIENT_ID), "spiffe://cluster.local/ns/x/sa/y")
        with pytest.raises(ValueError, match="exactly one URI SAN"):
            CertBundle.from_pem(key, chain, ca.pem)  # the store would not even take it
        good = mesh.client_certs.bundle(CLIENT_ID)
        mesh.client_certs.put(dataclasses.replace(good, key_pem=key, chain_pem=chain))
        before = _sample("meshnode_hbone_handshake_failures_total", direction="inbound",
                         reason="peer")
        try:
            with structlog.testing.capture_logs() as logs:
                await _refused(mesh)
        finally:
            await mesh.stop()
        assert app.connections == 0
        assert _sample("meshnode_hbone_handshake_failures_total", direction="inbound",
                       reason="peer") == before + 1
        assert any("exactly one URI SAN" in (e.get("error") or "") for e in logs)
    run(body())


def _deny(principal: str) -> model.Policy:
    return model.Policy("deny-client", "b", model.PolicyScope.NAMESPACE,
                        model.PolicyAction.DENY, (model.Group((model.Rule((model.Match(
                            principals=(model.StringMatch(model.StringKind.EXACT, principal),)),
                        )),)),))


def test_denied_by_policy_is_refused_logged_and_counted(ca: CA, run: Any) -> None:
    app = CountingEcho()
    labels = {"source_principal": str(CLIENT_ID), "destination_principal": str(SERVER_ID),
              "reason": "denied_by_policy", "policy": "b/deny-client"}

    async def body() -> None:
        mesh = await Mesh(ca, app).start()
        try:
            await _works(mesh)
            assert app.connections == 1
            mesh.policies = [_deny(CLIENT_ID.principal)]
            before = _sample("meshnode_proxy_authz_denied_total", **labels)
            with structlog.testing.capture_logs() as logs:
                await _refused(mesh)
            assert app.connections == 1  # never dialled
            assert _sample("meshnode_proxy_authz_denied_total", **labels) == before + 1
            denied = [e for e in logs if e["event"] == "hbone_denied"]
            assert len(denied) == 1
            assert denied[0]["source_principal"] == str(CLIENT_ID)
            assert denied[0]["policy"] == "b/deny-client"
            assert denied[0]["status"] == 401
            err = mesh.outbound_errors[-1]
            assert isinstance(err, HboneError) and err.status == 401
            mesh.policies = [_deny("cluster.local/ns/a/sa/not-the-client")]
            await _works(mesh)  # the policy decides per stream: lifting it restores access
        finally:
            await mesh.stop()
    run(body())


def test_allow_policy_that_does_not_match_denies(ca: CA, run: Any) -> None:
    async def body() -> None:
        mesh = await Mesh(ca, CountingEcho()).start()
        other_port = model.Match(destination_ports=(mesh.app_addr[1] + 1,))
        mesh.policies = [model.Policy("only-other-port", "b", model.PolicyScope.NAMESPACE,
                                      model.PolicyAction.ALLOW,
                                      (model.Group((model.Rule((other_port,)),)),))]
        try:
            await _refused(mesh)
            assert mesh.outbound_errors[-1].status == 401  # type: ignore[attr-defined]
            mesh.policies = [model.Policy("this-port", "b", model.PolicyScope.NAMESPACE,
                                          model.PolicyAction.ALLOW, (model.Group((model.Rule((
                                              model.Match(destination_ports=(mesh.app_addr[1],),
                                                          source_ips=(ipaddress.ip_network(
                                                              "127.0.0.0/8"),)),)),)),))]
            await _works(mesh)
        finally:
            await mesh.stop()
    run(body())


def test_app_refusing_gives_503(ca: CA, run: Any) -> None:
    async def body() -> None:
        mesh = await Mesh(ca, echo).start()
        mesh.app.close()
        await mesh.app.wait_closed()
        try:
            await _refused(mesh)
        finally:
            await mesh.stop()
        err = mesh.outbound_errors[-1]
        assert isinstance(err, HboneError) and err.status == 503
        assert mesh.inbound[-1].status == 503
    run(body())


def _peer_serials(links: Any) -> set[int]:
    out = set()
    for link in links:
        der = link.peer_info("ssl_object").getpeercert(binary_form=True)
        out.add(x509.load_der_x509_certificate(der).serial_number)
    return out


def test_rotation_applies_to_new_connections_only(ca: CA, run: Any) -> None:
    async def body() -> None:
        mesh = await Mesh(ca, echo).start()
        try:
            old_client = mesh.client_certs.bundle(CLIENT_ID).serial
            old_server = mesh.server_certs.bundle(SERVER_ID).serial
            r1, w1 = await mesh.connect()
            w1.write(b"one")
            assert await r1.readexactly(3) == b"one"
            assert _peer_serials(mesh.server.links) == {old_client}

            new_client, new_server = ca.leaf(str(CLIENT_ID)), ca.leaf(str(SERVER_ID))
            mesh.client_certs.put(new_client)
            mesh.server_certs.put(new_server)

            r2, w2 = await mesh.connect()
            w2.write(b"two")
            assert await r2.readexactly(3) == b"two"
            # A second TLS connection, presenting the new certificates both ways...
            assert _peer_serials(mesh.server.links) == {old_client, new_client.serial}
            client_links = [lk for v in mesh.client._pool.values() for lk in v]
            assert _peer_serials(client_links) == {old_server, new_server.serial}
            # ...while the stream opened before the rotation keeps working.
            w1.write(b"still one")
            assert await r1.readexactly(9) == b"still one"
            w1.close()
            w2.close()
        finally:
            await mesh.stop()
    run(body())


def test_streams_share_one_connection_until_rotation(ca: CA, run: Any) -> None:
    async def body() -> None:
        mesh = await Mesh(ca, echo).start()
        try:
            for _ in range(3):
                await _works(mesh)
            await asyncio.sleep(0.05)
            assert len(mesh.server.links) == 1
        finally:
            await mesh.stop()
    run(body())


def test_authorizer_crash_fails_closed(ca: CA, run: Any) -> None:
    app = CountingEcho()

    async def body() -> None:
        mesh = await Mesh(ca, app).start()

        def broken(*_: Any) -> authz.Decision:
            raise RuntimeError("policy bug")
        mesh.server.authorize = broken
        try:
            await _refused(mesh)
        finally:
            await mesh.stop()
        assert app.connections == 0
        assert mesh.outbound_errors[-1].status == 401  # type: ignore[attr-defined]
    run(body())


def test_server_shutdown_resets_live_streams(ca: CA, run: Any) -> None:
    async def body() -> None:
        mesh = await Mesh(ca, echo).start()
        try:
            r, w = await mesh.connect()
            w.write(b"ping")
            assert await r.readexactly(4) == b"ping"
            await mesh.server.close()
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(r.read(), 5)
            w.close()
        finally:
            await mesh.stop()
    run(body())


@pytest.mark.parametrize("value, want", [
    ("10.0.0.1:80", ("10.0.0.1", 80)), ("[fd00::1]:8080", ("fd00::1", 8080)),
    ("fd00::1:80", None), ("example.com:80", None), ("10.0.0.1", None),
    ("10.0.0.1:0", None), ("10.0.0.1:65536", None), ("[10.0.0.1:80", None),
])
def test_parse_authority(value: str, want: Any) -> None:
    from proxy.hbone.server import parse_authority
    assert parse_authority(value) == want


def test_invalid_connect_address_gives_400(ca: CA, run: Any) -> None:
    app = CountingEcho()

    async def body() -> None:
        mesh = await Mesh(ca, app).start()
        try:
            with pytest.raises(HboneError) as err:
                await mesh.client.open(CLIENT_ID, SERVER_ID, ("localhost", mesh.app_addr[1]))
            assert err.value.status == 400
            stream = await mesh.client.open(CLIENT_ID, SERVER_ID, mesh.app_addr)  # same link
            await stream.write(b"ok")
            assert await stream.read() == b"ok"
            stream.end()
        finally:
            await mesh.stop()
        assert app.connections == 1
    run(body())


def test_cancelling_serve_resets_the_tunnelled_connection(ca: CA, run: Any) -> None:
    """What PodProxy.stop does to its handler tasks: the client must see a reset."""
    async def body() -> None:
        mesh = await Mesh(ca, echo).start()
        try:
            r, w = await mesh.connect()
            w.write(b"ping")
            assert await r.readexactly(4) == b"ping"
            serving = [t for t in mesh._tasks
                       if getattr(t.get_coro(), "__qualname__", "") == "HboneServer.serve"]
            assert len(serving) == 1
            serving[0].cancel()
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(r.read(), 5)
            w.close()
        finally:
            await mesh.stop()
    run(body())
