"""Apply/diff/remove lifecycle, errors and the CLI, on the real kernel."""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys

import pytest

from agent.redirect import backend as engine
from agent.redirect.backend import RuleBackend
from agent.redirect.ebpf.loader import netns_cookie
from agent.redirect.errors import RedirectError
from agent.redirect.iptables_backend import LOCK_DIR, IptablesBackend, detect_flavour
from agent.redirect.spec import RedirectSpec
from core.bpf import default_pin_dir
from core.netns import entered, netns_inode
from testing.lab import Node
from tests.kernel.netutil import accepted_by, tcp_connect, tcp_listener


def sh(ns: str, cmd: str) -> str:
    return subprocess.run(["ip", "netns", "exec", os.path.basename(ns), "sh", "-c", cmd],
                          capture_output=True, text=True, check=True).stdout


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args],
                          capture_output=True, text=True, timeout=60)


def backend_flags(impl: RuleBackend) -> list[str]:
    if isinstance(impl, IptablesBackend):
        return ["--backend", "iptables", "--iptables-flavour", impl.flavour]
    return ["--backend", impl.name]


def delete_one_rule_by_hand(ns: str, impl: RuleBackend) -> None:
    if isinstance(impl, IptablesBackend):
        sh(ns, f"iptables-{impl.flavour} -t nat -D MESHNODE_OUTPUT 1")
    elif impl.name == "ebpf":
        # the pod's entry in the pinned `pods` map, as an operator with bpftool would
        key = " ".join(str(b) for b in netns_cookie(ns).to_bytes(8, "little"))
        subprocess.run(f"bpftool map delete pinned {default_pin_dir()}/pods key {key}",
                       shell=True, check=True)
    else:
        listing = sh(ns, "nft -a list chain inet meshnode-nat meshnode-output")
        rule_lines = [ln for ln in listing.splitlines() if "chain " not in ln]
        handle = re.findall(r"# handle (\d+)", "\n".join(rule_lines))[0]
        sh(ns, f"nft delete rule inet meshnode-nat meshnode-output handle {handle}")


def add_foreign_rules(ns: str, impl: RuleBackend) -> str:
    """Somebody else's rules in the same netns; returns a command that lists them."""
    if isinstance(impl, IptablesBackend):
        ipt = f"iptables-{impl.flavour}"
        sh(ns, f"{ipt} -t nat -N FOREIGN && {ipt} -t nat -A OUTPUT -p tcp --dport 4444 -j "
               f"FOREIGN && {ipt} -t nat -A FOREIGN -j RETURN")
        return f"{ipt}-save -t nat"
    sh(ns, "nft add table inet foreign && nft add chain inet foreign c '{ type filter hook "
           "output priority 0 ; }' && nft add rule inet foreign c tcp dport 4444 counter accept")
    return "nft list table inet foreign"


def test_apply_twice_gives_the_same_state(pods: tuple[Node, Node], impl: RuleBackend) -> None:
    client, _ = pods
    spec = RedirectSpec(ipv6=True)
    engine.apply(client.path, spec, impl)
    first = engine.read(client.path, spec, impl)
    engine.apply(client.path, spec, impl)
    second = engine.read(client.path, spec, impl)
    assert first.rules.chains.keys() == second.rules.chains.keys()
    for key in first.rules.chains:
        assert first.rules.texts(key) == second.rules.texts(key), key
    assert engine.diff(client.path, spec, impl).in_sync


def test_diff_detects_a_deleted_rule_and_apply_repairs(pods: tuple[Node, Node],
                                                       impl: RuleBackend) -> None:
    client, _ = pods
    flags = backend_flags(impl)
    assert cli("redirect", "apply", "--netns", client.path, *flags).returncode == 0
    assert cli("redirect", "diff", "--netns", client.path, *flags).returncode == 0
    delete_one_rule_by_hand(client.path, impl)
    res = cli("redirect", "diff", "--netns", client.path, *flags, "-o", "json")
    assert res.returncode == 1, res.stderr
    report = json.loads(res.stdout)
    assert report["in_sync"] is False and report["missing"], report
    assert cli("redirect", "apply", "--netns", client.path, *flags).returncode == 0
    assert cli("redirect", "diff", "--netns", client.path, *flags).returncode == 0


def test_diff_reports_a_rule_added_to_our_chain(pods: tuple[Node, Node],
                                                netfilter_impl: RuleBackend) -> None:
    """Netfilter backends only: eBPF has no chain to add a rule to; a changed map entry is
    tested in tests/ebpf (test_engine_apply_diff_remove)."""
    impl = netfilter_impl
    client, _ = pods
    spec = RedirectSpec()
    engine.apply(client.path, spec, impl)
    if isinstance(impl, IptablesBackend):
        sh(client.path, f"iptables-{impl.flavour} -t nat -I MESHNODE_OUTPUT 1 -p tcp -j ACCEPT")
    else:
        sh(client.path, "nft insert rule inet meshnode-nat meshnode-output meta l4proto tcp accept")
    drift = engine.diff(client.path, spec, impl)
    assert drift.unexpected and not drift.missing, drift


def test_diff_reports_missing_routing(pods: tuple[Node, Node], impl: RuleBackend) -> None:
    client, _ = pods
    spec = RedirectSpec()
    engine.apply(client.path, spec, impl)
    sh(client.path, "ip rule del pref 32764")
    drift = engine.diff(client.path, spec, impl)
    assert any("fwmark" in m for m in drift.missing), drift


def test_remove_restores_direct_path_and_spares_foreign_rules(pods: tuple[Node, Node],
                                                             impl: RuleBackend) -> None:
    client, server = pods
    listing = add_foreign_rules(client.path, impl)
    foreign_before = sh(client.path, listing)
    spec = RedirectSpec(ipv6=True)
    engine.apply(client.path, spec, impl)
    assert engine.remove(client.path, spec, impl)
    assert engine.remove(client.path, spec, impl) == []  # second remove is a no-op
    assert "4444" in sh(client.path, listing)
    strip = re.compile(r"^#.*$|\[\d+:\d+\]|packets \d+ bytes \d+", re.M)
    assert strip.sub("", sh(client.path, listing)) == strip.sub("", foreign_before)
    state = engine.read(client.path, spec, impl)
    assert not state.rules and not any(r.rule or r.route for r in state.routes)
    app = tcp_listener(server.path, 80)
    with tcp_connect(client.path, server.ip4, 80):
        assert accepted_by(app) is not None


def test_apply_keeps_foreign_rules(pods: tuple[Node, Node], impl: RuleBackend) -> None:
    client, _ = pods
    listing = add_foreign_rules(client.path, impl)
    before = sh(client.path, listing)
    engine.apply(client.path, RedirectSpec(), impl)
    assert "4444" in sh(client.path, listing)
    assert len(sh(client.path, listing).splitlines()) >= len(
        [x for x in before.splitlines() if not x.startswith("#")])


def test_turning_dns_off_removes_the_raw_rules(pods: tuple[Node, Node],
                                              impl: RuleBackend) -> None:
    client, _ = pods

    def dns_state(spec: RedirectSpec) -> bool:
        rules = engine.read(client.path, spec, impl).rules
        if impl.name == "ebpf":  # the DNS port in the pod's map entry
            return any("dns_port=15053" in r.text for lst in rules.chains.values()
                       for r in lst)
        return any(k.table.endswith("raw") for k in rules.chains)

    engine.apply(client.path, RedirectSpec(dns_capture=True), impl)
    assert dns_state(RedirectSpec())
    spec = RedirectSpec(dns_capture=False)
    engine.apply(client.path, spec, impl)
    assert not dns_state(spec)
    assert engine.diff(client.path, spec, impl).in_sync


def test_missing_netns_is_one_clear_error(impl: RuleBackend) -> None:
    with pytest.raises(RedirectError) as e:
        engine.apply("/var/run/netns/meshnode-does-not-exist", RedirectSpec(), impl)
    assert "meshnode-does-not-exist" in str(e.value) and "open netns" in str(e.value)
    res = cli("redirect", "apply", "--netns", "/var/run/netns/meshnode-does-not-exist",
              *backend_flags(impl))
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: netns ")
    assert "Traceback" not in res.stderr and res.stdout == ""


def test_a_path_that_is_not_a_netns_is_refused(tmp_path: os.PathLike[str],
                                              impl: RuleBackend) -> None:
    bogus = os.path.join(str(tmp_path), "not-a-netns")
    open(bogus, "w").close()
    with pytest.raises(RedirectError) as e:
        engine.apply(bogus, RedirectSpec(), impl)
    assert "enter netns" in str(e.value)


def test_failed_apply_leaves_nothing_behind(pods: tuple[Node, Node]) -> None:
    """A kernel-side failure mid-apply (xtables lock held) leaves no route, rule or chain."""
    client, _ = pods
    impl = IptablesBackend("legacy")
    os.makedirs(LOCK_DIR, exist_ok=True)
    with entered(client.path):
        lock_path = f"{LOCK_DIR}/{netns_inode('/proc/thread-self/ns/net')}"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(RedirectError) as e:
            engine.apply(client.path, RedirectSpec(), impl)
    os.unlink(lock_path)
    assert "restore" in e.value.step and client.name in str(e.value)
    state = engine.read(client.path, RedirectSpec(), impl)
    assert not state.rules
    assert not any(r.rule or r.route for r in state.routes)


def test_show_reports_counters(pods: tuple[Node, Node], impl: RuleBackend) -> None:
    client, server = pods
    flags = backend_flags(impl)
    assert cli("redirect", "apply", "--netns", client.path, *flags).returncode == 0
    proxy = tcp_listener(client.path, 15001, "0.0.0.0")
    with tcp_connect(client.path, server.ip4, 80):
        assert accepted_by(proxy) is not None
    res = cli("redirect", "show", "--netns", client.path, *flags, "-o", "json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)["rules"]
    hit = [r for r in rows if "15001" in r["rule"] and r["packets"] > 0]
    assert hit, rows
    table = cli("redirect", "show", "--netns", client.path, *flags)
    assert "PACKETS" in table.stdout and "15001" in table.stdout
    yml = cli("redirect", "show", "--netns", client.path, *flags, "-o", "yaml")
    assert "rules:" in yml.stdout


def test_flavour_detection_follows_legacy_rules(pods: tuple[Node, Node]) -> None:
    client, server = pods
    with entered(client.path):
        assert detect_flavour.__wrapped__() == "nft"
    sh(server.path, "iptables-legacy -t filter -A INPUT -p tcp --dport 1 -j ACCEPT")
    with entered(server.path):
        assert detect_flavour.__wrapped__() == "legacy"


def test_apply_by_netns_fd(pods: tuple[Node, Node], impl: RuleBackend) -> None:
    client, server = pods
    fd = os.open(client.path, os.O_RDONLY)
    try:
        engine.apply(fd, RedirectSpec(), impl)
    finally:
        os.close(fd)
    assert engine.diff(client.path, RedirectSpec(), impl).in_sync
    proxy = tcp_listener(client.path, 15001, "0.0.0.0")
    with tcp_connect(client.path, server.ip4, 80):
        assert accepted_by(proxy) is not None
