"""`meshnode controlplane --check`, the real command, on traffic management objects: a
VirtualService, DestinationRule or Sidecar that the conversion refuses is one line
`Kind ns/name: field: reason` (Istio's wording), as a schema failure is; from a manifests
directory and from an API server (the fake one in testing/fakeapi.py, which does not
validate, as an older CRD version might have admitted the object)."""

from __future__ import annotations

from pathlib import Path

import yaml

from testing.fakeapi import CONTROLPLANE_RESOURCES, FakeApi
from tests.controlplane.harness import run
from tests.controlplane.test_check import cli
from tests.controlplane.test_traffic_convert import CANARY_DR, HOST, MESH, NS, canary_vs

BAD_SUBSET = canary_vs(90, 10).replace("subset: v2", "subset: v3")
BAD_SIDECAR = """
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: prod}
spec:
  egress:
  - hosts: ["istio-system/*"]
    port: {number: 9080}
  - hosts: ["./*"]
    port: {number: 9080}
"""
SCHEMA_BAD = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: typo, namespace: prod}
spec:
  host: web
  trafficPolicy:
    loadBalancer: {simple: FASTEST}
"""
LINES = [
    f"VirtualService {NS}/tcp-echo: spec.tcp[0].route[1].destination.subset: Referenced "
    f'host+subset in destinationrule not found: "{HOST}+v3"',
    "Sidecar prod/default: spec.egress[1].port.number: sidecar: ports on IP bound listeners "
    "must be unique",
]
SCHEMA_LINE = ('DestinationRule prod/typo: spec.trafficPolicy.loadBalancer.simple: Unsupported '
               'value: "FASTEST": supported values: "UNSPECIFIED", "LEAST_CONN", "RANDOM", '
               '"PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST"')


def test_check_config_names_refused_traffic_objects(tmp_path: Path) -> None:
    conf = tmp_path / "manifests"
    conf.mkdir()
    (conf / "mesh.yaml").write_text(MESH)
    (conf / "rules.yaml").write_text("---".join([CANARY_DR, BAD_SUBSET, BAD_SIDECAR,
                                                 SCHEMA_BAD]))

    async def main() -> None:
        code, out, err = await cli("--check", "--config", str(conf))
        assert code == 2, err
        assert sorted(out.splitlines()) == sorted([*LINES, SCHEMA_LINE]), out
        assert "Traceback" not in err
        (conf / "rules.yaml").write_text("---".join([CANARY_DR, canary_vs(90, 10)]))
        assert await cli("--check", "--config", str(conf)) == (0, "", "")
    run(main(), timeout=120)


def test_check_kubeconfig_names_refused_traffic_objects(tmp_path: Path) -> None:
    async def main() -> None:
        api = FakeApi(CONTROLPLANE_RESOURCES)
        by_kind = {r.kind: r for r in CONTROLPLANE_RESOURCES}
        for doc in (MESH, CANARY_DR, BAD_SUBSET, BAD_SIDECAR, SCHEMA_BAD):
            for obj in yaml.safe_load_all(doc):
                if obj:
                    api.put(by_kind[obj["kind"]].plural, obj)
        await api.start()
        try:
            code, out, err = await cli("--check", "--kubeconfig",
                                       api.kubeconfig(tmp_path / "kubeconfig"))
            assert code == 2, err
            # Pods of MESH pass; the schema failure is reported, then not converted.
            assert sorted(out.splitlines()) == sorted([*LINES, SCHEMA_LINE]), out
        finally:
            await api.stop()
    run(main(), timeout=120)
