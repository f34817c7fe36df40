"""The mesh-wide outboundTrafficPolicy (Istio's MeshConfig outboundTrafficPolicy.mode): set
with `meshnode controlplane --outbound-traffic-policy`, carried in the conversion's Options,
applied by the traffic index where no Sidecar says otherwise. As in Istio, a Sidecar's own
outboundTrafficPolicy wins (a root-namespace one for the whole mesh), and a Sidecar that
sets none takes the mesh's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cli.main import build_parser
from controlplane.ambient import Index, Options
from controlplane.kube.objects import ObjectStore
from controlplane.traffic.index import TrafficIndex
from core.mesh.traffic import EgressHost, EgressListener, EgressPolicy, OutboundMode
from testing.agent_harness import REPO
from tests.controlplane.test_traffic_convert import MESH, NS, World

REGISTRY_ONLY = Options(outbound_traffic_policy=OutboundMode.REGISTRY_ONLY)


def world(opts: Options, *docs: str) -> TrafficIndex:
    w = World(*docs)  # the YAML into a store
    return TrafficIndex(w.store, Index(w.store, opts))


def test_the_flag_parses() -> None:
    a = build_parser().parse_args(["controlplane", "--config", "x",
                                   "--outbound-traffic-policy", "REGISTRY_ONLY"])
    assert a.outbound_traffic_policy == "REGISTRY_ONLY"
    assert build_parser().parse_args(["controlplane", "--config", "x"]) \
        .outbound_traffic_policy == "ALLOW_ANY"


def test_mesh_wide_registry_only_without_any_sidecar() -> None:
    t = world(REGISTRY_ONLY, MESH)
    assert t.egress == {"mesh default": EgressPolicy("", "", OutboundMode.REGISTRY_ONLY)}


def test_allow_any_by_default_sends_no_mesh_default() -> None:
    store = ObjectStore()
    assert TrafficIndex(store, Index(store)).egress == {}


def test_a_root_namespace_sidecar_wins_over_the_mesh_setting() -> None:
    t = world(REGISTRY_ONLY, MESH, """
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: istio-system}
spec:
  outboundTrafficPolicy: {mode: ALLOW_ANY}
""")
    assert t.egress == {"mesh default": EgressPolicy("", "", OutboundMode.ALLOW_ANY)}


def test_a_sidecar_that_sets_no_mode_takes_the_mesh_s() -> None:
    t = world(REGISTRY_ONLY, MESH, f"""
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: {NS}}}
spec:
  egress:
  - hosts: ["./*"]
""")
    assert t.egress[f"{NS}/default"] == EgressPolicy(
        NS, "default", OutboundMode.REGISTRY_ONLY, (EgressListener((EgressHost(".", "*"),)),))
    # No root-namespace Sidecar: the mesh's own default still goes to the other namespaces.
    assert t.egress["mesh default"].mode == OutboundMode.REGISTRY_ONLY


def test_a_bad_mode_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text("")
    r = subprocess.run([sys.executable, "-m", "cli.main", "controlplane", "--config",
                        str(tmp_path), "--check", "--outbound-traffic-policy", "registry_only"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2
    assert "argument --outbound-traffic-policy: invalid choice: 'registry_only'" in r.stderr
    assert "Traceback" not in r.stderr


def test_check_runs_with_the_flag(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(MESH)
    r = subprocess.run([sys.executable, "-m", "cli.main", "controlplane", "--config",
                        str(tmp_path), "--check", "--outbound-traffic-policy", "REGISTRY_ONLY"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert (r.returncode, r.stdout) == (0, ""), r.stderr
