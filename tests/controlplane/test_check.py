"""`meshnode controlplane --check`, the real command, on both sources: a manifests directory
(`--config`) and an API server (`--kubeconfig`, the fake one in testing/fakeapi.py, which
stores whatever it is given: it does not validate, so it can hold what an older CRD version
admitted). Each problem is one line, `Kind ns/name: field: reason`: schema failures and what
the conversion skips alike; exit 2 if there is any, 0 and no output if none."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import yaml

from testing.fakeapi import AUTHORIZATION_POLICIES, CONTROLPLANE_RESOURCES, FakeApi
from tests.controlplane.harness import run

REPO = Path(__file__).resolve().parents[2]
NS = {"apiVersion": "v1", "kind": "Namespace",
      "metadata": {"name": "shop", "labels": {"istio.io/dataplane-mode": "ambient"}}}


def policy(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "shop"}, "spec": spec}


GOOD = policy("good", action="ALLOW", rules=[{"from": [{"source": {
    "principals": ["cluster.local/ns/shop/sa/sleep"]}}]}])
# Passes the CRD schema (ipBlocks are strings) but not the conversion.
NOT_AN_IP = policy("not-an-ip", action="DENY", rules=[{"from": [{"source": {
    "ipBlocks": ["10.0.0.300/32"]}}]}])
# Fails the schema: action is an enum.
BAD_ACTION = policy("bad-action", action="FOO")

CONVERSION_LINE = ("AuthorizationPolicy shop/not-an-ip: spec.rules[0].from[0].source.ipBlocks[0]:"
                   " '10.0.0.300/32' is not an IP address or CIDR; read as any value (the rule"
                   " denies more)")
SCHEMA_LINE = ('AuthorizationPolicy shop/bad-action: spec.action: Unsupported value: "FOO": '
               'supported values: "ALLOW", "DENY", "AUDIT", "CUSTOM"')


async def cli(*args: str) -> tuple[int, str, str]:
    """The command in a child process, awaited (the fake API server runs on this loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", "controlplane", *args, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_check_config_names_schema_and_conversion_problems(tmp_path: Path) -> None:
    conf = tmp_path / "manifests"
    conf.mkdir()
    (conf / "all.yaml").write_text(yaml.safe_dump_all([NS, GOOD, NOT_AN_IP, BAD_ACTION]))

    async def main() -> None:
        code, out, err = await cli("--check", "--config", str(conf))
        assert code == 2, err
        assert sorted(out.splitlines()) == sorted([CONVERSION_LINE, SCHEMA_LINE]), out
        assert "Traceback" not in err
        (conf / "all.yaml").write_text(yaml.safe_dump_all([NS, GOOD]))
        assert await cli("--check", "--config", str(conf)) == (0, "", "")
    run(main(), timeout=120)


def test_check_kubeconfig_lists_the_cluster_and_names_each_problem(tmp_path: Path) -> None:
    async def main() -> None:
        api = FakeApi(CONTROLPLANE_RESOURCES)
        api.put("namespaces", NS)
        for p in (GOOD, NOT_AN_IP, BAD_ACTION):
            api.put(AUTHORIZATION_POLICIES.plural, p)
        await api.start()
        try:
            kubeconfig = api.kubeconfig(tmp_path / "kubeconfig")
            code, out, err = await cli("--check", "--kubeconfig", kubeconfig)
            assert code == 2, err
            assert sorted(out.splitlines()) == sorted([CONVERSION_LINE, SCHEMA_LINE]), out
            assert "Traceback" not in err
            api.remove(AUTHORIZATION_POLICIES.plural, "not-an-ip", "shop")
            api.remove(AUTHORIZATION_POLICIES.plural, "bad-action", "shop")
            assert await cli("--check", "--kubeconfig", kubeconfig) == (0, "", "")
            # Istio's CRDs not installed: those kinds are empty, not an error.
            for r in CONTROLPLANE_RESOURCES:
                if r.group.endswith("istio.io"):
                    api.unserve(r.plural)
            assert await cli("--check", "--kubeconfig", kubeconfig) == (0, "", "")
        finally:
            await api.stop()
        # The API server gone: one clear error, no traceback.
        code, out, err = await cli("--check", "--kubeconfig", kubeconfig)
        assert (code, out) == (2, ""), err
        assert err.startswith("error: ") and "Traceback" not in err, err
    run(main(), timeout=180)
