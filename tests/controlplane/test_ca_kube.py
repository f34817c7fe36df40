"""The CA and ADS with Kubernetes service-account tokens (controlplane/auth.py), over real gRPC
+ TLS, the tokens checked by the fake API server's TokenReview: a node agent's token signs
the identities of its node's pods only, a workload's token its own identity only, bad tokens
are UNAUTHENTICATED with the reason, and an API server that cannot be asked means refusal
(UNAVAILABLE), never a pass and never a crash."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from prometheus_client import REGISTRY

from controlplane import metrics
from controlplane.kube.tokenreview import PATH as TOKEN_REVIEWS
from controlplane.resources import ADDRESS_TYPE
from meshpb.istio import ca_pb2, ca_pb2_grpc
from tests.controlplane.harness import AdsClient, auth, channel, control_plane, eventually, run
from tests.controlplane.kubeworld import (
    AGENT1,
    AGENT2,
    GONE_POD,
    SLEEP,
    UNBOUND_AGENT,
    WEB,
    WEB_TOKEN,
    WRONG_AUDIENCE,
    kube_control_plane,
    world,
)
from tests.controlplane.test_ca_grpc import make_csr, request

Md = list[tuple[str, str]]


async def create(cp: Any, token: str, identity: str, extra: Md | None = None,
                 impersonate: bool = True) -> ca_pb2.IstioCertificateResponse:
    async with channel(cp) as ch:
        stub = ca_pb2_grpc.IstioCertificateServiceStub(ch)
        req = request(make_csr(identity), impersonate=identity if impersonate else "")
        resp: ca_pb2.IstioCertificateResponse = await stub.CreateCertificate(
            req, metadata=auth(token) + (extra or []), timeout=10)
        return resp


async def refusal(cp: Any, token: str, identity: str,
                  extra: Md | None = None) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await create(cp, token, identity, extra)
    return exc.value


def san(resp: ca_pb2.IstioCertificateResponse) -> list[str]:
    leaf = x509.load_pem_x509_certificate(resp.cert_chain[0].encode())
    ext = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return list(ext.value.get_values_for_type(x509.UniformResourceIdentifier))


def refused_total(reason: str) -> float:
    return REGISTRY.get_sample_value("meshnode_controlplane_csr_refused_total",
                                     {"reason": reason}) or 0.0


def reviews(api: Any) -> int:
    return sum(1 for m, p, _q in api.requests if (m, p) == ("POST", TOKEN_REVIEWS))


def test_a_node_agents_token_signs_its_nodes_identities_only(tmp_path: Path) -> None:
    async def main() -> None:
        async with kube_control_plane(tmp_path) as (api, cp):
            # node1's agent (the node in the token, Kubernetes >= 1.30): web runs there.
            resp = await create(cp, AGENT1, WEB)
            assert san(resp) == [WEB]
            assert reviews(api) == 1
            assert not [p for m, p, _q in api.requests if m == "GET" and "/namespaces/" in p]
            # sleep runs on node2: not node1's to ask for.
            err = await refusal(cp, AGENT1, SLEEP)
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "node1" in (err.details() or "") and SLEEP in (err.details() or "")
            # Without ImpersonatedIdentity too (the CSR's SAN names it).
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await create(cp, AGENT1, SLEEP, impersonate=False)
            assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
            # node2's agent: a token with its pod only (before 1.30): the pod is read.
            assert san(await create(cp, AGENT2, SLEEP)) == [SLEEP]
            assert ("GET", "/api/v1/namespaces/meshnode-system/pods/meshnode-node-node2") in [
                (m, p) for m, p, _q in api.requests]
            assert (await refusal(cp, AGENT2, WEB)).code() == grpc.StatusCode.PERMISSION_DENIED
            # The pod moves: node authorization follows the API server.
            api.remove("pods", "web-0", "shop")
            await eventually(lambda: not cp.store.has_identity_on_node("shop", "web", "node1"))
            assert (await refusal(cp, AGENT1, WEB)).code() == grpc.StatusCode.PERMISSION_DENIED
    run(main(), timeout=40)


@pytest.mark.parametrize(("token", "words"), [
    ("not-a-token-anyone-knows", "invalid bearer token"),
    (WRONG_AUDIENCE, "audiences"),
    (UNBOUND_AGENT, "not bound to a pod"),
    (GONE_POD, "uid"),
    ("", "no bearer token"),
])
def test_bad_tokens_are_unauthenticated_with_the_reason(tmp_path: Path, token: str,
                                                        words: str) -> None:
    async def main() -> None:
        async with kube_control_plane(tmp_path) as (_api, cp):
            before = refused_total(metrics.UNAUTHENTICATED)
            err = await refusal(cp, token, WEB)
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err.details()
            assert "request authenticate failure" in (err.details() or "")
            assert words in (err.details() or ""), err.details()
            assert refused_total(metrics.UNAUTHENTICATED) == before + 1
    run(main(), timeout=40)


def test_a_workloads_own_token_gets_its_own_identity_only(tmp_path: Path) -> None:
    async def main() -> None:
        async with kube_control_plane(tmp_path) as (_api, cp):
            assert san(await create(cp, WEB_TOKEN, WEB)) == [WEB]
            assert san(await create(cp, WEB_TOKEN, WEB, impersonate=False)) == [WEB]
            # Another identity, even one on its own node: not a node agent.
            err = await refusal(cp, WEB_TOKEN, "spiffe://cluster.local/ns/shop/sa/other")
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "not a node agent" in (err.details() or "")
            err = await refusal(cp, WEB_TOKEN, SLEEP)
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    run(main(), timeout=40)


def test_the_api_server_unreachable_or_failing_means_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with kube_control_plane(tmp_path) as (api, cp):
            assert san(await create(cp, AGENT1, WEB)) == [WEB]
            # A 500 from the TokenReview: refused, the next call is fine again.
            api.fail_next(f"POST {TOKEN_REVIEWS}", 500)
            err = await refusal(cp, AGENT1, WEB)
            assert err.code() == grpc.StatusCode.UNAVAILABLE
            assert "500" in (err.details() or "")
            # node2's pod cannot be read (403: RBAC without `get pods`): refused too.
            api.fail_next("GET /api/v1/namespaces/meshnode-system/pods/", 403)
            assert (await refusal(cp, AGENT2, SLEEP)).code() == grpc.StatusCode.UNAVAILABLE
            assert san(await create(cp, AGENT1, WEB)) == [WEB]
            # The API server goes away: fail closed, and the control plane keeps serving.
            port = api.port
            await api.stop()
            before = refused_total(metrics.AUTH_UNAVAILABLE)
            err = await refusal(cp, AGENT1, WEB)
            assert err.code() == grpc.StatusCode.UNAVAILABLE
            assert "cannot check the Kubernetes token" in (err.details() or "")
            assert refused_total(metrics.AUTH_UNAVAILABLE) == before + 1
            # ...while node tokens, checked locally, still work.
            assert san(await create(cp, cp.node_token("node1"), WEB)) == [WEB]
            await api.start(port=port)
            assert san(await create(cp, AGENT1, WEB)) == [WEB]
    run(main(), timeout=60)


def test_another_clusters_token_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with kube_control_plane(tmp_path) as (_api, cp):
            assert san(await create(cp, AGENT1, WEB, [("clusterid", "Kubernetes")])) == [WEB]
            err = await refusal(cp, AGENT1, WEB, [("clusterid", "east")])
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "east" in (err.details() or "")
    run(main(), timeout=40)


def test_trusted_node_accounts_are_configurable(tmp_path: Path) -> None:
    """istiod's CA_TRUSTED_NODE_ACCOUNTS: only the listed accounts act for a node."""
    async def main() -> None:
        async with kube_control_plane(tmp_path,
                                      trusted_node_accounts=["istio-system/ztunnel"]) as (_, cp):
            err = await refusal(cp, AGENT1, WEB)
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "not a node agent" in (err.details() or "")
    run(main(), timeout=40)


def test_ads_takes_a_node_agents_token_and_refuses_a_workloads(tmp_path: Path) -> None:
    async def main() -> None:
        async with kube_control_plane(tmp_path) as (_api, cp):
            async with channel(cp) as ch:
                c = AdsClient(ch, AGENT1)
                r = await c.subscribe(ADDRESS_TYPE)
                assert "Kubernetes//Pod/shop/web-0" in [res.name for res in r.resources]
                assert [s.node_name for s in cp.ads.sessions] == ["node1"]
                c.close()
            for token, code in ((WEB_TOKEN, grpc.StatusCode.PERMISSION_DENIED),
                                ("nobody", grpc.StatusCode.UNAUTHENTICATED)):
                async with channel(cp) as ch:
                    c = AdsClient(ch, token)
                    with pytest.raises(grpc.aio.AioRpcError) as exc:
                        await c.send(type_url=ADDRESS_TYPE)
                        await c.recv()
                    assert exc.value.code() == code, token
    run(main(), timeout=40)


def test_without_an_api_server_kubernetes_tokens_are_refused(tmp_path: Path) -> None:
    """Manifests: nobody to review a token; node tokens only."""
    async def main() -> None:
        async with control_plane(tmp_path) as cp:
            err = await refusal(cp, AGENT1, "spiffe://cluster.local/ns/default/sa/sleep")
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "API server" in (err.details() or "")
    run(main())


def test_the_world_is_what_the_tests_say() -> None:
    api = world()
    assert api.find("pods", "web-0", "shop") is not None
    assert set(api.tokens) >= {AGENT1, AGENT2, WEB_TOKEN}


@pytest.mark.parametrize("bad", ["meshnode-node", "/sa", "ns/", "a/b/c"])
def test_a_bad_trusted_node_account_is_a_one_line_error(
        tmp_path: Path, bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    rc = main(["controlplane", "--config", str(tmp_path / "unused"), "--state-dir",
               str(tmp_path / "s"), "--trusted-node-account", bad])
    assert rc == 2
    assert capsys.readouterr().err.startswith("error: --trusted-node-account: ")
