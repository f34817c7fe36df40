"""Shell completion scripts, `redirect render -o json|yaml` as data, and the proxy's admin
views with no mesh (no control plane: the pods it serves only)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from agent.redirect import iptables_rules, nftables_rules
from agent.redirect.spec import RedirectSpec
from tests.cli.clirun import meshnode

COMMANDS = ["version", "check", "status", "pods", "proxy-config", "redirect", "completion"]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish", "tcsh"])
def test_completion_scripts_name_every_command(shell: str) -> None:
    r = meshnode("completion", shell)
    assert r.returncode == 0 and r.stderr == ""
    for word in (*COMMANDS, "certificates", "connections", "--kubeconfig", "--log-format"):
        assert word in r.stdout, (shell, word)
    if shutil.which(shell) and shell in ("bash", "zsh", "fish"):
        check = subprocess.run([shell, "-n"], input=r.stdout, text=True, capture_output=True)
        assert check.returncode == 0, check.stderr


def test_bash_completion_completes_subcommands_and_choices() -> None:
    script = meshnode("completion", "bash").stdout
    probe = script + r'''
COMP_WORDS=(meshnode proxy-config c); COMP_CWORD=2; _shtab_meshnode
printf '%s\n' "${COMPREPLY[@]}"
echo --
COMP_WORDS=(meshnode status -o ""); COMP_CWORD=3; _shtab_meshnode
printf '%s\n' "${COMPREPLY[@]}"
'''
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
    views, _, formats = out.stdout.partition("--\n")
    assert set(views.split()) == {"certificates", "connections"}
    assert set(formats.split()) == {"table", "json", "yaml"}


def test_render_json_is_the_rules_as_data() -> None:
    spec = RedirectSpec()
    d = json.loads(meshnode("redirect", "render", "-o", "json").stdout)
    assert d["backend"] == "iptables" and d["spec"]["outbound_port"] == 15001
    payload = iptables_rules.render_pod(spec, 4)
    assert [(t["family"], t["table"]) for t in d["tables"]] == [
        ("ipv4", t.name) for t in payload.tables]
    for got, table in zip(d["tables"], payload.tables, strict=True):
        assert got["chains"] == list(table.chains)
        assert [(r["chain"], r["rule"]) for r in got["rules"]] == [
            (r.chain, r.args) for r in table.rules]
    assert d["routing"] == [{"family": "ipv4",
                             "rule": "ipv4 rule pref 32764 fwmark 0x111/0xfff lookup 100",
                             "route": "ipv4 route local 0.0.0.0/0 dev lo table 100"}]
    assert "payloads" not in d  # no script in a string
    n = yaml.safe_load(meshnode("redirect", "render", "--backend", "nftables", "--ipv6",
                                "--no-dns", "-o", "yaml").stdout)
    script = nftables_rules.render_pod(RedirectSpec(ipv6=True, dns_capture=False))
    assert n["spec"]["ipv6"] is True and n["spec"]["dns_capture"] is False
    assert [t["table"] for t in n["tables"]] == [t.name for t in script.tables]
    assert [(r["chain"], r["rule"]) for r in n["tables"][0]["rules"]] == \
        list(script.tables[0].rules)
    assert {c["hook"] for c in n["tables"][0]["base_chains"]} <= {
        "prerouting", "output", "input", "postrouting"}
    e = json.loads(meshnode("redirect", "render", "--backend", "ebpf",
                            "--exclude-outbound-ports", "80,443", "-o", "json").stdout)
    assert e["pods_map_entry"]["ports"] == [80, 443]
    host = json.loads(meshnode("redirect", "render", "--host", "-o", "json").stdout)
    assert host["ipsets"] and "routing" not in host
    # The table format stays the exact script, for a person or `iptables-restore`.
    text = meshnode("redirect", "render").stdout
    assert payload.text() in text


def test_admin_views_without_a_mesh() -> None:
    """A proxy without a control plane: its served pods are the workloads, every other view
    is empty; nothing fails."""
    from aiohttp.test_utils import TestClient, TestServer

    from proxy.admin import make_admin_app

    class Pod:
        uid, name, namespace, service_account = "u1", "web", "default", "web"
        ips = {"198.18.0.1"}
        conns: dict[int, Any] = {}
        meshpath = None

    class Manager:
        pods = {"u1": Pod()}

    class State:
        mesh = None
        manager = Manager()

        def config_dump(self) -> dict[str, Any]:
            return {}

        def ready(self) -> bool:
            return True

    async def go() -> dict[str, Any]:
        async with TestClient(TestServer(make_admin_app(State()))) as client:
            out = {}
            for view in ("workloads", "services", "policies", "certificates", "connections"):
                r = await client.get(f"/debug/{view}")
                assert r.status == 200
                out[view] = await r.json()
            info = await client.get("/server_info")
            out["info"] = await info.json()
            assert (await client.get("/debug/nope")).status == 404
            return out

    out = asyncio.run(go())
    [w] = out["workloads"]
    assert (w["name"], w["local"], w["in_mesh"], w["addresses"]) == ("web", True, False,
                                                                     ["198.18.0.1"])
    assert out["services"] == out["policies"] == out["certificates"] == \
        out["connections"] == []
    assert out["info"]["component"] == "proxy" and out["info"]["ready"] is True
