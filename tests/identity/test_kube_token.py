"""The agent presenting a projected service-account token (audience istio-ca) instead of a
node token, against meshnode's control plane reading the fake API server (which reviews the
token): the CA client reads the token file for every request, so the kubelet's rotation is
followed; `controlplane.ca_token_file` gives the CA its own token while discovery keeps the
node token."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from agent import config as agent_config
from agent.identity.caclient import CaClient
from agent.identity.manager import IdentityConfig
from agent.meshconfig.meshclient import ControlPlaneSettings, MeshClient
from agent.meshconfig.runtime import MeshRuntime
from agent.xds.channel import ControlPlaneEndpoint
from controlplane.kube.tokenreview import PATH as TOKEN_REVIEWS
from controlplane.server import ControlPlane
from tests.controlplane.harness import eventually, run
from tests.controlplane.kubeworld import (
    AGENT1,
    AGENT1_ROTATED,
    SLEEP,
    WEB,
    agent_user,
    kube_control_plane,
)


def endpoint(cp: ControlPlane, token_file: Path) -> ControlPlaneEndpoint:
    return ControlPlaneEndpoint(address=f"127.0.0.1:{cp.port}",
                                root_ca=str(cp.config.root_cert_path), server_name="localhost",
                                token_path=str(token_file))


def test_the_ca_client_sends_the_projected_token_and_rereads_it(tmp_path: Path) -> None:
    async def main() -> None:
        async with kube_control_plane(tmp_path) as (api, cp):
            token = tmp_path / "istio-token"
            token.write_text(AGENT1 + "\n")   # as the kubelet writes it (no newline is fine too)
            ca = CaClient(endpoint(cp, token), ttl_seconds=600, timeout=5)
            try:
                bundle = await ca.fetch(WEB)
                assert bundle.identity == WEB
                with pytest.raises(grpc.aio.AioRpcError) as exc:
                    await ca.fetch(SLEEP)      # node2's workload
                assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
                # The kubelet rotates the token; the old one stops being valid.
                api.add_token(AGENT1_ROTATED, agent_user("node1"))
                api.remove_token(AGENT1)
                token.write_text(AGENT1_ROTATED)
                assert (await ca.fetch(WEB)).identity == WEB
                reviewed = [r for r in api.requests if r[:2] == ("POST", TOKEN_REVIEWS)]
                assert len(reviewed) == 3
                # The file gone (the projected volume not mounted): the fetch fails, no crash.
                token.unlink()
                with pytest.raises(OSError):
                    await ca.fetch(WEB)
            finally:
                await ca.close()
    run(main(), timeout=40)


def test_ca_token_file_is_the_cas_own_credential(tmp_path: Path) -> None:
    """Discovery with the node token, the CA with the projected token: the agent's
    `MeshClient` holds web's certificate (web runs on node1)."""
    async def main() -> None:
        async with kube_control_plane(tmp_path) as (api, cp):
            (tmp_path / "node-token").write_text(cp.node_token("node1"))
            (tmp_path / "istio-token").write_text(AGENT1)
            settings = ControlPlaneSettings(
                address=f"127.0.0.1:{cp.port}", root_ca=str(cp.config.root_cert_path),
                server_name="localhost", token_path=str(tmp_path / "node-token"),
                ca_token_path=str(tmp_path / "istio-token"), node_name="node1",
                cert_ttl_seconds=600)
            assert settings.ca_endpoint().token_path == str(tmp_path / "istio-token")
            assert settings.endpoint(settings.address).token_path == str(
                tmp_path / "node-token")
            mc = MeshClient(settings, IdentityConfig(min_refresh_seconds=0.05))
            try:
                await mc.start()
                assert await mc.wait_ready(10)
                await eventually(lambda: mc.identities.get(WEB) is not None, timeout=10)
                # (the index has every pod on node1, the agent's own too; sleep is node2's)
                assert WEB in mc.identities.identities()
                assert SLEEP not in mc.identities.identities()
                # Discovery used the node token (checked locally), the CA the Kubernetes
                # token (one review per certificate).
                assert [r for r in api.requests if r[:2] == ("POST", TOKEN_REVIEWS)]
            finally:
                await mc.stop()
    run(main(), timeout=40)


def test_the_config_option_reaches_the_ca_client(tmp_path: Path) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text("controlplane:\n  address: cp:15012\n  root_cert: /r\n"
                 "  token_file: /var/run/secrets/tokens/istio-token\n"
                 "  ca_address: istiod.istio-system.svc:15012\n"
                 "  ca_token_file: /var/run/secrets/tokens/istiod-token\n")
    cfg = agent_config.load(str(f))
    assert cfg.controlplane is not None
    assert cfg.controlplane.ca_token_file == "/var/run/secrets/tokens/istiod-token"
    rt = MeshRuntime(cfg)
    ep = rt.settings.ca_endpoint()
    assert (ep.address, ep.token_path) == ("istiod.istio-system.svc:15012",
                                           "/var/run/secrets/tokens/istiod-token")
    assert rt.settings.endpoint(rt.settings.address).token_path == \
        "/var/run/secrets/tokens/istio-token"
    # Unset: the CA shares discovery's token.
    f.write_text("controlplane:\n  address: cp:15012\n  root_cert: /r\n  token_file: /t\n")
    assert MeshRuntime(agent_config.load(str(f))).settings.ca_endpoint().token_path == "/t"
