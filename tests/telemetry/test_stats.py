"""The metrics listener (core/stats.py) Prometheus scrapes, apart from the local admin ports:
only /metrics and the readiness path; a port held by another process (the old proxy during a
rollout) is waited for, not shared; the daemons' `metrics_address` keys."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.config import AgentConfig
from core.config import ConfigError
from core.stats import StatsServer
from proxy import config as proxy_config
from proxy import metrics as proxy_metrics  # registers the istio_tcp_* counters here
from proxy.config import ProxyConfig
from testing.agent_harness import AgentProc, free_port
from testing.proxy_procs import ProxyProc


def get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""  # nothing listens


async def fetch(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    return await asyncio.to_thread(get, port, path, method)


def test_serves_metrics_and_readiness_only() -> None:
    ready = [False]

    async def main() -> None:
        server = StatsServer("127.0.0.1:0", lambda: ready[0], ready_path="/readyz")
        await server.start()
        try:
            assert server.port
            status, body = await fetch(server.port, "/metrics")
            assert status == 200
            assert f"# TYPE {proxy_metrics.OPENED._name}_total counter" in body
            assert await fetch(server.port, "/readyz") == (503, "")
            ready[0] = True
            assert await fetch(server.port, "/readyz") == (200, "ready\n")
            for path in ("/config_dump", "/debug/pods", "/debug/mesh", "/healthz/ready", "/"):
                assert (await fetch(server.port, path))[0] == 404, path
            assert (await fetch(server.port, "/quitquitquit", "POST"))[0] in (404, 405)
        finally:
            await server.stop()
        assert (await fetch(server.port, "/metrics"))[0] == 0  # stopped: nothing listens

    asyncio.run(main())


def test_a_busy_port_is_waited_for_not_shared() -> None:
    async def main() -> None:
        holder = socket.socket()
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = StatsServer(f"127.0.0.1:{port}", lambda: True, retry_seconds=0.05)
        with capture_logs() as logs:
            await server.start()  # does not fail: the old holder will go
            try:
                assert server.port == 0
                assert [e["event"] for e in logs] == ["stats_port_busy"]
                await asyncio.sleep(0.2)
                assert server.port == 0  # still held: still waiting, no second line
                assert [e["event"] for e in logs] == ["stats_port_busy"]
                holder.close()
                for _ in range(100):
                    if server.port:
                        break
                    await asyncio.sleep(0.02)
                assert server.port == port
                assert (await fetch(port, "/metrics"))[0] == 200
                assert [e["event"] for e in logs] == ["stats_port_busy", "stats_listening"]
            finally:
                await server.stop()
                holder.close()

    asyncio.run(main())


def test_an_address_the_node_lacks_is_a_config_error() -> None:
    async def main() -> None:
        # 198.18.255.254 is on no interface here: the bind fails, nothing is changed.
        server = StatsServer("198.18.255.254:15020", lambda: True)
        with pytest.raises(ConfigError, match=r"^config: metrics_address: cannot listen on "
                                              r"198\.18\.255\.254:15020: "):
            await server.start()
        await server.stop()

    asyncio.run(main())


def test_off_when_empty() -> None:
    async def main() -> None:
        server = StatsServer("", lambda: True)
        await server.start()
        assert server.port == 0
        await server.stop()

    asyncio.run(main())


def test_defaults_are_the_documented_ports() -> None:
    assert ProxyConfig().metrics_address == "0.0.0.0:15020"
    assert ProxyConfig().admin_address == "127.0.0.1:15000"
    assert AgentConfig().metrics_address == "0.0.0.0:15022"
    assert AgentConfig().http_address == "127.0.0.1:15021"


@pytest.mark.parametrize("value,error", [
    ("127.0.0.1:15000", "metrics_address: port 15000 is admin_address's"),
    ("0.0.0.0:99999", "metrics_address: port 99999 out of range 0-65535"),
    ("localhost:15020", "metrics_address: 'localhost' is not an IP address"),
])
def test_proxy_metrics_address_is_checked(value: str, error: str) -> None:
    with pytest.raises(ConfigError, match=f"^{error}$"):
        proxy_config.check_addresses(ProxyConfig(metrics_address=value))
    proxy_config.check_addresses(ProxyConfig(metrics_address=""))
    proxy_config.check_addresses(ProxyConfig(metrics_address="[::]:15020"))


@pytest.mark.parametrize("value,error", [
    ("0.0.0.0:15021", "metrics_address: port 15021 is http_address's"),
    ("nothostport", "metrics_address: 'nothostport' is not HOST:PORT"),
])
def test_agent_metrics_address_is_checked(value: str, error: str) -> None:
    with pytest.raises(ConfigError, match=f"^{error}$"):
        AgentConfig(metrics_address=value).validate()
    AgentConfig(metrics_address="").validate()


def test_the_proxy_serves_metrics_apart_from_its_admin_port(tmp_path: Path) -> None:
    """A real `meshnode proxy` (no agent: not ready): its metrics listener answers /metrics
    and /healthz/ready, and nothing of the admin port's."""
    proxy = ProxyProc(tmp_path, zds_socket=str(tmp_path / "zds.sock"))
    assert proxy.metrics_port != proxy.port
    proxy.start(wait_ready=False)
    try:
        for _ in range(200):
            if get(proxy.metrics_port, "/metrics")[0] == 200:
                break
            time.sleep(0.05)
        status, body = get(proxy.metrics_port, "/metrics")
        assert status == 200 and "istio_tcp_sent_bytes_total" in body
        assert "meshnode_proxy_active_connections 0.0" in body
        assert get(proxy.metrics_port, "/healthz/ready")[0] == 503  # no agent yet
        assert get(proxy.metrics_port, "/config_dump")[0] == 404
        assert get(proxy.metrics_port, "/quitquitquit", "POST")[0] in (404, 405)
        assert proxy.get("/config_dump")[0] == 200  # the admin port still has it
        assert f'"metrics": "127.0.0.1:{proxy.metrics_port}"' in proxy.log.read_text()
    finally:
        proxy.stop()


def test_the_agent_serves_metrics_and_its_status_apart_from_its_debug_port(
        tmp_path: Path) -> None:
    """A real `meshnode agent`: its metrics listener answers /metrics, /readyz and the
    summary `meshnode status --kubeconfig` reads through the API server's pod proxy
    (/debug/status, /debug/version), and none of the debug port's pod records."""
    agent = AgentProc(tmp_path)
    assert agent.metrics_port != agent.port
    agent.start()
    try:
        status, body = get(agent.metrics_port, "/metrics")
        assert status == 200 and "meshnode_drift_repairs_total" in body
        assert get(agent.metrics_port, "/readyz")[0] == 200
        status, body = get(agent.metrics_port, "/debug/status")
        assert status == 200 and '"component": "agent"' in body and '"pods"' in body
        assert get(agent.metrics_port, "/debug/version")[0] == 200
        for path in ("/debug/pods", "/debug/pods/default/web", "/debug/mesh"):
            assert get(agent.metrics_port, path)[0] == 404, path
        assert get(agent.port, "/debug/pods")[0] == 200
    finally:
        agent.stop()


def test_free_port_helper_gives_distinct_ports() -> None:
    assert len({free_port() for _ in range(5)}) >= 4
