"""`meshnode controlplane --config DIR`: one-line errors for bad input, and the real process
serving. (`--check` of bad manifests, and no source at all: test_sources.py.)"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import grpc
import pytest

from cli.main import main
from meshpb.istio import ca_pb2, ca_pb2_grpc
from tests.controlplane.harness import auth, manifests
from tests.controlplane.proc import MESHNODE, ControlPlaneProcess
from tests.controlplane.test_ca_grpc import SLEEP_ID, make_csr


def test_missing_config_and_half_a_root_are_one_line_errors_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nope = tmp_path / "nope"
    assert main(["controlplane", "--config", str(nope), "--state-dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {nope}: cannot read") and err.count("\n") == 1, err
    assert main(["controlplane", "--config", str(manifests(tmp_path)), "--state-dir",
                 str(tmp_path / "s"), "--root-cert", str(tmp_path / "c.pem")]) == 2
    assert capsys.readouterr().err == "error: --root-cert and --root-key go together\n"


def test_check_and_print_node_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A process: --check configures the logging of the whole process.
    done = subprocess.run([*MESHNODE, "controlplane", "--config", str(manifests(tmp_path)),
                           "--check"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    key = tmp_path / "token.key"
    assert main(["controlplane", "--config", str(manifests(tmp_path)), "--token-key", str(key),
                 "--print-node-token", "node1"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("mn1.") and oct(key.stat().st_mode & 0o777) == "0o600"


def test_bad_or_busy_metrics_address_is_one_line_error(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    base = ["controlplane", "--config", str(manifests(tmp_path)), "--state-dir",
            str(tmp_path / "s"), "--address", "127.0.0.1:0"]
    assert main([*base, "--metrics-address", "localhost"]) == 2
    assert capsys.readouterr().err == "error: --metrics-address: 'localhost' is not HOST:PORT\n"
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
    cp = ControlPlaneProcess(manifests(tmp_path), tmp_path / "state")
    token = cp.token("node1")
    cp.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{cp.metrics_port}/readyz",
                                    timeout=5) as r:
            assert r.status == 200
        signed = "meshnode_controlplane_csr_signed_total"
        assert _metric(cp.metrics_port, signed) == 0
        root = cp.root_pem
        with grpc.secure_channel(f"localhost:{cp.port}",
                                 grpc.ssl_channel_credentials(root_certificates=root)) as ch:
            resp = ca_pb2_grpc.IstioCertificateServiceStub(ch).CreateCertificate(
                ca_pb2.IstioCertificateRequest(csr=make_csr(SLEEP_ID), validity_duration=600),
                metadata=auth(token), timeout=5)
        assert len(resp.cert_chain) == 2 and resp.cert_chain[1].encode() == root
        assert _metric(cp.metrics_port, signed) == 1
        assert cp.proc is not None
        cp.proc.send_signal(signal.SIGINT)
        assert cp.proc.wait(timeout=10) == 0, cp.log.read_text()[-2000:]
    finally:
        cp.stop()  # SIGTERM, then SIGKILL after 10 s: never leaves the process behind


@pytest.mark.parametrize(("flags", "error"), [
    (["--address", "127.0.0.1:99999"], "--address: port 99999 out of range 0-65535"),
    (["--address", "nothostport"], "--address: 'nothostport' is not HOST:PORT"),
    (["--address", "::1:15012"], "--address: '::1:15012': an IPv6 address goes in brackets, "
                                 "[::1]:PORT"),
    (["--address", "cp.example:15012"], "--address: 'cp.example' is not an IP address"),
    (["--metrics-address", "[::1]:x"], "--metrics-address: port 'x' is not a number"),
    (["--metrics-address", "[::g]:80"], "--metrics-address: '::g' is not an IPv6 address"),
    (["--drain-seconds", "-1"], "--drain-seconds: -1 out of range 0-3600"),
], ids=["port-range", "not-hostport", "v6-brackets", "hostname", "port-text", "bad-v6",
        "drain"])
def test_bad_flag_is_one_line_exit_2_before_anything_is_made(
        tmp_path: Path, flags: list[str], error: str) -> None:
    state = tmp_path / "state"
    done = subprocess.run([*MESHNODE, "controlplane", "--config", str(manifests(tmp_path)),
                           "--state-dir", str(state), *flags], capture_output=True, text=True,
                          timeout=30)
    assert (done.returncode, done.stderr) == (2, f"error: {error}\n")
    assert not state.exists()  # refused before the root and the token key are made
