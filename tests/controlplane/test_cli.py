"""`meshnode controlplane`: one-line errors for bad input, and the real process serving."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from agent.cli.main import main
from meshpb.istio import ca_pb2, ca_pb2_grpc
from tests.controlplane.harness import EXAMPLE, auth
from tests.controlplane.test_ca_grpc import SLEEP_ID, make_csr

MESHNODE = [sys.executable, "-m", "agent.cli.main"]


def test_bad_mesh_file_is_one_line_error_exit_2(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "mesh.yaml"
    bad.write_text("workloads:\n  - name: a\n    ips: [1.2.3]\n    node: n1\n")
    rc = main(["controlplane", "--mesh", str(bad), "--state-dir", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err == f"error: {bad}:3: workloads[0].ips[0]: '1.2.3' is not an IP address\n"


def test_missing_mesh_file_and_half_a_root(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["controlplane", "--mesh", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["controlplane", "--mesh", str(EXAMPLE), "--state-dir", str(tmp_path / "s"),
                 "--root-cert", str(tmp_path / "c.pem")]) == 2
    assert "--root-cert and --root-key go together" in capsys.readouterr().err


def test_check_and_print_node_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["controlplane", "--mesh", str(EXAMPLE), "--check"]) == 0
    key = tmp_path / "token.key"
    assert main(["controlplane", "--mesh", str(EXAMPLE), "--token-key", str(key),
                 "--print-node-token", "node1"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("mn1.") and oct(key.stat().st_mode & 0o777) == "0o600"


def test_bad_or_busy_metrics_address_is_one_line_error(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    base = ["controlplane", "--mesh", str(EXAMPLE), "--state-dir", str(tmp_path / "s"),
            "--address", "127.0.0.1:0"]
    assert main([*base, "--metrics-address", "localhost"]) == 2
    assert capsys.readouterr().err == (
        "error: metrics address 'localhost' is not HOST:PORT\n")
    # A process: serving configures the logging of the whole process.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        done = subprocess.run([*MESHNODE, *base, "--metrics-address", f"127.0.0.1:{taken}"],
                              capture_output=True, text=True, timeout=30,
                              env={**os.environ, "GRPC_VERBOSITY": "ERROR"})
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: cannot serve metrics on 127.0.0.1:{taken}: ")
    assert done.stderr.count("\n") == 1, done.stderr


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    values = [float(line.split()[-1]) for line in text.splitlines()
              if line.startswith(name + " ")]
    assert len(values) == 1, name
    return values[0]


def test_the_process_serves_the_ca_with_its_generated_root(tmp_path: Path) -> None:
    state = tmp_path / "state"
    token = subprocess.run(
        [*MESHNODE, "controlplane", "--mesh", str(EXAMPLE), "--state-dir", str(state),
         "--print-node-token", "node1"], check=True, capture_output=True, text=True).stdout.strip()
    proc = subprocess.Popen(
        [*MESHNODE, "controlplane", "--mesh", str(EXAMPLE), "--state-dir", str(state),
         "--address", "127.0.0.1:0", "--metrics-address", "127.0.0.1:0"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "GRPC_VERBOSITY": "ERROR"})
    try:
        port = metrics_port = 0
        deadline = time.monotonic() + 15
        assert proc.stderr is not None
        while not port and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, "the control plane exited"
            if line.startswith("{"):
                rec = json.loads(line)
                if rec.get("event") == "controlplane_serving":
                    port, metrics_port = rec["port"], rec["metrics_port"]
        assert port and metrics_port
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=5) as r:
            assert r.status == 200
        signed = "meshnode_controlplane_csr_signed_total"
        assert _metric(metrics_port, signed) == 0
        root = (state / "root-cert.pem").read_bytes()
        with grpc.secure_channel(f"localhost:{port}",
                                 grpc.ssl_channel_credentials(root_certificates=root)) as ch:
            resp = ca_pb2_grpc.IstioCertificateServiceStub(ch).CreateCertificate(
                ca_pb2.IstioCertificateRequest(csr=make_csr(SLEEP_ID), validity_duration=600),
                metadata=auth(token), timeout=5)
        assert len(resp.cert_chain) == 2 and resp.cert_chain[1].encode() == root
        assert _metric(metrics_port, signed) == 1
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) in (0, 130)
