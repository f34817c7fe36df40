"""The real `meshnode proxy` process: a bad address, port or socket path is a one-line error
naming the key (exit 2, nothing bound), and SIGTERM / SIGINT stop it with exit 0."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from testing.agent_harness import REPO
from testing.proxy_procs import ProxyProc


@pytest.mark.parametrize(("extra", "error"), [
    ({"admin_address": "127.0.0.1:99999"}, "admin_address: port 99999 out of range 1-65535"),
    ({"admin_address": "nothostport"}, "admin_address: 'nothostport' is not HOST:PORT"),
    ({"admin_address": "[::1:15000"}, "admin_address: '[::1:15000': no ']' after the IPv6 "
                                      "address"),
    ({"tunnel_port": 0}, "tunnel_port: port 0 out of range 1-65535"),
    ({"dns_fallback": ["198.18.0.53", "198.18.0.54:99999"]},
     "dns_fallback[1]: port 99999 out of range 1-65535"),
    ({"mesh_socket": "mesh.sock"}, "mesh_socket: 'mesh.sock' is not an absolute path"),
], ids=["port-range", "not-hostport", "v6-bracket", "tunnel-port", "dns-fallback",
        "relative-socket"])
def test_bad_address_is_one_line_exit_2(tmp_path: Path, extra: dict[str, Any],
                                        error: str) -> None:
    proxy = ProxyProc(tmp_path, zds_socket=str(tmp_path / "zds.sock"), extra=extra)
    done = subprocess.run([sys.executable, "-m", "cli.main", "proxy", "--config",
                           str(proxy.config)], capture_output=True, text=True, timeout=20,
                          cwd=REPO)
    assert (done.returncode, done.stderr) == (2, f"error: config: {error}\n")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_exits_0_within_the_drain(tmp_path: Path, sig: int) -> None:
    # No agent: the proxy serves its admin port and retries ZDS; nothing to drain.
    proxy = ProxyProc(tmp_path, zds_socket=str(tmp_path / "zds.sock"),
                      extra={"drain_seconds": 5}).start(wait_ready=False)
    try:
        assert proxy.proc is not None
        deadline = time.monotonic() + 15
        while proxy.get("/healthz/ready")[0] == 0:  # 503 until an agent syncs: it is up
            assert proxy.proc.poll() is None and time.monotonic() < deadline, \
                proxy.log.read_text()[-2000:]
            time.sleep(0.05)
        signalled = time.monotonic()
        proxy.proc.send_signal(sig)
        assert proxy.proc.wait(timeout=10) == 0, proxy.log.read_text()[-2000:]
        assert time.monotonic() - signalled < 5
        log = proxy.log.read_text()
        assert '"event": "proxy_stopped"' in log and "Traceback" not in log
    finally:
        proxy.stop()
