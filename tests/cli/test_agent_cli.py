"""The commands that talk to the agent or the proxy, with a real agent in this netns (and
without one): clear errors and exit 2 when nothing answers, `redirect show|diff --pod` on
what the agent recorded, `pods --offline`, `--log-format console`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from testing.agent_harness import REPO, AgentProc, cni, free_port, stop_process, wait_up
from testing.lab import Lab
from tests.cli.clirun import meshnode, meshnode_json

pytestmark = pytest.mark.kernel


def _dead_config(tmp_path: Path) -> str:
    """An agent config whose agent is not running (its port: free, nothing listens)."""
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml.safe_dump({"http_address": f"127.0.0.1:{free_port()}",
                                   "state_dir": str(tmp_path / "state")}))
    return str(cfg)


@pytest.mark.parametrize("args", [
    ["pods"], ["status"], ["redirect", "show", "--pod", "default/web"],
    ["redirect", "diff", "--pod", "default/web"]])
def test_no_agent_is_a_clear_error(tmp_path: Path, args: list[str]) -> None:
    config = _dead_config(tmp_path)
    r = meshnode(*args, "--config", config)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == ""
    port = yaml.safe_load(Path(config).read_text())["http_address"]
    assert r.stderr.startswith(f"error: no agent answers at {port} (Connection refused): is "
                               f"it running? Start it (`meshnode agent"), r.stderr
    # Nothing was created for the agent that is not there.
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("view", ["workloads", "services", "policies", "certificates",
                                  "connections"])
def test_no_proxy_is_a_clear_error(view: str) -> None:
    r = meshnode("proxy-config", view, "--proxy-admin", f"127.0.0.1:{free_port()}")
    assert r.returncode == 2 and r.stdout == ""
    assert "error: no node proxy answers at 127.0.0.1:" in r.stderr
    assert "meshnode proxy --config FILE" in r.stderr


def test_pods_offline_reads_what_a_stopped_agent_left(tmp_path: Path) -> None:
    config = _dead_config(tmp_path)
    r = meshnode("pods", "--config", config, "--offline")
    assert r.returncode == 2 and "no agent state at" in r.stderr
    agent = AgentProc(tmp_path / "a", drift_interval=3600)
    with Lab("po") as lab:
        pod, peer = lab.node("pod"), lab.node("peer")
        lab.link(pod, peer, subnet=7)
        agent.start()
        try:
            assert cni("ADD", agent.socket, pod.path, "c1", [pod.ip4], name="web").code == 0
            live = meshnode_json("pods", "--config", str(agent.config), "--proxy-admin",
                                 "127.0.0.1:1")
        finally:
            agent.stop()
        r = meshnode("pods", "--config", str(agent.config))
        assert r.returncode == 2 and "no agent answers" in r.stderr
        offline = meshnode_json("pods", "--config", str(agent.config), "--offline",
                                "--proxy-admin", "127.0.0.1:1")
        assert [p["name"] for p in live] == [p["name"] for p in offline] == ["web"]
        assert offline[0]["proxy"] == "unreachable"


def test_redirect_diff_by_pod_uses_the_recorded_backend_and_capture(tmp_path: Path) -> None:
    """The agent runs iptables-legacy with capture options of its config, and the pod has
    overrides of its own: `--pod` compares against exactly that, where flags typed again
    (the defaults) would show drift that is not there. A real change is still found."""
    agent = AgentProc(tmp_path, backend="iptables", flavour="legacy", drift_interval=3600)
    cfg = yaml.safe_load(agent.config.read_text())
    cfg["capture"]["exclude_outbound_ports"] = [9999]
    agent.config.write_text(yaml.safe_dump(cfg))
    with Lab("rd") as lab:
        pod, peer = lab.node("pod"), lab.node("peer")
        lab.link(pod, peer, subnet=8)
        agent.start()
        try:
            r0 = cni("ADD", agent.socket, pod.path, "c1", [pod.ip4], name="web",
                     capture={"dns_capture": False})
            assert r0.code == 0, r0.stdout
            flags = ["--config", str(agent.config)]
            d = meshnode_json("redirect", "diff", "--pod", "default/web", *flags)
            assert d["in_sync"] and d["backend"] == "iptables-legacy"
            assert d["capture"] == {"dns_capture": False, "ipv6": False}
            assert d["netns"] == pod.path and d["spec_from"] == "agent"
            # The same netns with the flags' defaults: false drift, the bug --pod fixes.
            typed = meshnode("redirect", "diff", "--netns", pod.path, "--backend", "iptables",
                             "--iptables-flavour", "legacy")
            assert typed.returncode == 1
            show = meshnode_json("redirect", "show", "--pod", "default/web", *flags)
            assert any("9999" in r["rule"] for r in show["rules"])
            assert not any("53" in r["rule"].split() for r in show["rules"])
            text = meshnode("redirect", "show", "--pod", "default/web", *flags).stdout
            assert text.startswith("pod default/web (enrolled") or \
                text.startswith("pod default/web (redirected"), text
            # Redirect options with --pod are refused: they would not be used.
            r = meshnode("redirect", "diff", "--pod", "default/web", "--no-dns", *flags)
            assert r.returncode == 2 and "drop --no-dns" in r.stderr
            # A real change (legacy sends no notification: nothing repairs it meanwhile).
            subprocess.run(["ip", "netns", "exec", pod.name, "iptables-legacy", "-t", "nat",
                            "-F", "MESHNODE_OUTPUT"], check=True)
            drift = meshnode("redirect", "diff", "--pod", "default/web", *flags)
            assert drift.returncode == 1 and "- missing:" in drift.stdout
            # Wrong pod: named, with what the agent holds.
            r = meshnode("redirect", "diff", "--pod", "default/nope", *flags)
            assert r.returncode == 2
            assert "pod default/nope is not enrolled on this node" in r.stderr
            assert "default/web" in r.stderr
        finally:
            agent.stop()


def test_status_names_what_is_wrong(tmp_path: Path) -> None:
    """An agent with no proxy and no control plane: status says the proxy is down, exit 1."""
    agent = AgentProc(tmp_path, drift_interval=3600).start()
    try:
        proxy = f"127.0.0.1:{free_port()}"
        st = meshnode_json("status", "--config", str(agent.config), "--proxy-admin", proxy,
                           code=1)
        assert st["agent"]["ready"] is True and st["proxy"]["running"] is False
        assert st["controlplane"] is None or st["controlplane"]["controlplane"] is None
        assert any(p.startswith(f"node proxy: no node proxy answers at {proxy}")
                   for p in st["problems"]), st["problems"]
        r = meshnode("status", "--config", str(agent.config), "--proxy-admin", proxy)
        assert r.returncode == 1 and "DOWN" in r.stdout and "Problems:" in r.stdout
        assert "none configured" in r.stdout
    finally:
        agent.stop()


def test_log_format_console(tmp_path: Path) -> None:
    """`--log-format console`: structlog's human-readable lines, not JSON."""
    agent = AgentProc(tmp_path, drift_interval=3600)
    log = tmp_path / "console.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "agent", "--config",
                                 str(agent.config), "--log-format", "console"],
                                stdout=out, stderr=out, cwd=REPO)
    try:
        wait_up(proc, log, "agent", lambda: "agent_ready" in log.read_text())
    finally:
        stop_process(proc)
    lines = [ln for ln in log.read_text().splitlines() if "agent_ready" in ln]
    assert lines and not lines[0].lstrip().startswith("{")
    assert "[info     ]" in lines[0] and "socket=" in lines[0]
    with pytest.raises(ValueError):
        json.loads(lines[0])
    bad = meshnode("agent", "--config", str(agent.config), "--log-format", "xml")
    assert bad.returncode == 2 and "invalid choice: 'xml'" in bad.stderr
