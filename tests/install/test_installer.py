"""Installer on real temp dirs: install, idempotency, wrapping, uninstall, stop, status."""

from __future__ import annotations

import copy
import json
import os
import stat
from pathlib import Path

import pytest

from agent.install import (
    Installer,
    InstallError,
    NoPrimaryConfig,
    PluginEntry,
    RepairOutcome,
    metrics,
)
from agent.install.atomic import TEMP_SUFFIX
from tests.install import CALICO, OUR_TYPE, Env, make_env, our_entries, read_json


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return make_env(tmp_path)


def test_install_chains_entry_last_and_copies_binary(env: Env) -> None:
    path = env.write_conf("10-calico.conflist", CALICO)
    inst = Installer(env.config())
    changes = inst.install()
    assert changes  # something was done
    doc = read_json(path)
    assert doc["plugins"][:-1] == CALICO["plugins"]
    assert doc["plugins"][-1] == PluginEntry().to_dict()
    assert {k: v for k, v in doc.items() if k != "plugins"} == {
        k: v for k, v in CALICO.items() if k != "plugins"}
    assert env.binary.read_bytes() == env.plugin.read_bytes()
    assert inst.check().ready and inst.ready()
    assert metrics.ready_value() == 1.0


def test_install_twice_same_bytes(env: Env) -> None:
    path = env.write_conf("10-calico.conflist", CALICO)
    inst = Installer(env.config())
    inst.install()
    first = (path.read_bytes(), env.binary.read_bytes(), os.stat(path).st_ino,
             os.stat(env.binary).st_ino)
    assert inst.install() == []
    assert Installer(env.config()).install() == []  # a new process too
    second = (path.read_bytes(), env.binary.read_bytes(), os.stat(path).st_ino,
              os.stat(env.binary).st_ino)
    assert first == second


def test_conf_is_wrapped_renamed_and_mode_kept(env: Env) -> None:
    conf = {"cniVersion": "0.4.0", "name": "dbnet", "type": "bridge", "bridge": "cni0"}
    old = env.write_conf("10-bridge.conf", conf, mode=0o600)
    Installer(env.config()).install()
    new = env.net_dir / "10-bridge.conflist"
    assert not old.exists()
    assert stat.S_IMODE(os.stat(new).st_mode) == 0o600
    doc = read_json(new)
    assert doc["name"] == "dbnet" and doc["cniVersion"] == "0.4.0"
    assert doc["plugins"][0] == {k: v for k, v in conf.items() if k != "cniVersion"}
    assert doc["plugins"][1]["type"] == OUR_TYPE and len(doc["plugins"]) == 2
    assert sorted(p.name for p in env.net_dir.iterdir()) == ["10-bridge.conflist"]


def test_conflist_mode_kept(env: Env) -> None:
    path = env.write_conf("10-calico.conflist", CALICO, mode=0o640)
    Installer(env.config()).install()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert len(our_entries(path)) == 1


def test_duplicates_and_stale_removed(env: Env) -> None:
    doc = copy.deepcopy(CALICO)
    stale = {"type": OUR_TYPE, "name": OUR_TYPE, "agent_socket": "/old.sock"}
    doc["plugins"] = [stale, *doc["plugins"], stale]
    path = env.write_conf("10-calico.conflist", doc)
    inst = Installer(env.config())
    assert inst.check().problems[0] == "entry_duplicate"
    inst.install()
    plugins = read_json(path)["plugins"]
    assert plugins == [*CALICO["plugins"], PluginEntry().to_dict()]


def test_changed_entry_config_is_rewritten(env: Env) -> None:
    path = env.write_conf("10-calico.conflist", CALICO)
    Installer(env.config()).install()
    inst = Installer(env.config(entry=PluginEntry(agent_socket="/run/new.sock")))
    assert inst.check().problems == ("entry_changed",)
    inst.install()
    assert [e["agent_socket"] for e in our_entries(path)] == ["/run/new.sock"]


def test_invalid_files_skipped_on_disk(env: Env) -> None:
    (env.net_dir / "00-broken.conflist").write_text("{\"name\": \"x\", \"plugins\": [")
    (env.net_dir / "01-noplugins.conflist").write_text('{"name": "x"}')
    (env.net_dir / "02-notype.conf").write_text('{"name": "x"}')
    (env.net_dir / "03-dir.conflist").mkdir()
    path = env.write_conf("10-calico.conflist", CALICO)
    inst = Installer(env.config())
    inst.install()
    assert len(our_entries(path)) == 1
    assert (env.net_dir / "00-broken.conflist").read_text() == "{\"name\": \"x\", \"plugins\": ["
    st = inst.status()
    assert st["conflist"]["path"] == str(path)
    assert [s["file"] for s in st["conflist"]["skipped"]] == [
        "00-broken.conflist", "01-noplugins.conflist", "02-notype.conf"]


def test_no_primary_config(env: Env) -> None:
    (env.net_dir / "00-broken.conflist").write_text("nope")
    inst = Installer(env.config())
    with pytest.raises(NoPrimaryConfig):
        inst.install()
    assert inst.check().problems[0] == "no_primary_config"
    assert inst.repair() is RepairOutcome.WAITING
    assert not inst.ready()


def test_missing_plugin_source(env: Env) -> None:
    env.write_conf("10-calico.conflist", CALICO)
    env.plugin.unlink()
    with pytest.raises(InstallError, match="not found"):
        Installer(env.config()).install()
    assert not env.binary.exists()


def test_stale_entry_in_former_primary_removed(env: Env) -> None:
    old = env.write_conf("10-calico.conflist", CALICO)
    Installer(env.config()).install()
    assert len(our_entries(old)) == 1
    new = env.write_conf("05-cilium.conflist", {
        "name": "cilium", "cniVersion": "0.3.1", "plugins": [{"type": "cilium-cni"}]})
    inst = Installer(env.config())
    assert inst.check().problems[0] == "entry_missing"
    inst.install()
    assert len(our_entries(new)) == 1
    assert read_json(old) == CALICO


def test_uninstall_leaves_primary_otherwise_intact(env: Env) -> None:
    conf = {"cniVersion": "0.4.0", "name": "dbnet", "type": "bridge"}
    env.write_conf("10-bridge.conf", conf, mode=0o640)
    inst = Installer(env.config())
    inst.install()
    wrapped = env.net_dir / "10-bridge.conflist"
    before = read_json(wrapped)
    inst.uninstall()
    after = read_json(wrapped)  # still a list: nothing is unwrapped
    assert after == {**before, "plugins": before["plugins"][:-1]}
    assert stat.S_IMODE(os.stat(wrapped).st_mode) == 0o640
    assert not env.binary.exists()
    assert not inst.ready() and metrics.ready_value() == 0.0
    assert inst.uninstall() == []  # idempotent


def test_uninstall_keeps_file_that_would_be_left_empty(env: Env) -> None:
    only_ours = {"name": "x", "cniVersion": "0.3.1",
                 "plugins": [{"type": OUR_TYPE, "name": OUR_TYPE}]}
    path = env.write_conf("10-x.conflist", only_ours)
    Installer(env.config()).uninstall()
    assert read_json(path) == only_ours


def test_uninstall_removes_our_temp_files(env: Env) -> None:
    tmp = env.bin_dir / f".meshnode-cni.123{TEMP_SUFFIX}"
    tmp.write_bytes(b"x")
    Installer(env.config()).uninstall()
    assert not tmp.exists()


def test_stop_upgrade_leaves_everything(env: Env) -> None:
    path = env.write_conf("10-calico.conflist", CALICO)
    inst = Installer(env.config())
    inst.start()
    assert inst.watching
    snapshot = (path.read_bytes(), env.binary.read_bytes())
    inst.stop(upgrade=True)
    assert not inst.watching
    assert (path.read_bytes(), env.binary.read_bytes()) == snapshot
    assert Installer(env.config()).check().ready


def test_stop_without_upgrade_uninstalls(env: Env) -> None:
    path = env.write_conf("10-calico.conflist", CALICO)
    inst = Installer(env.config())
    inst.start()
    inst.stop(upgrade=False)
    assert read_json(path) == CALICO
    assert not env.binary.exists()


def test_status_fields(env: Env) -> None:
    path = env.write_conf("10-calico.conflist", CALICO)
    inst = Installer(env.config())
    inst.install()
    os.unlink(env.binary)
    assert inst.repair(trigger="test") is RepairOutcome.REPAIRED
    st = inst.status()
    assert st["ready"] is True and st["problems"] == []
    assert st["binary"]["path"] == str(env.binary)
    assert st["binary"]["present"] is True and st["binary"]["mode"] == "0755"
    assert st["binary"]["sha256"] == st["binary"]["source_sha256"]
    assert len(st["binary"]["sha256"]) == 64
    assert st["conflist"]["path"] == str(path)
    assert st["entry"] == PluginEntry().to_dict()
    assert st["last_repair"]["reason"] == "binary_missing"
    assert st["last_repair"]["time"].endswith("+00:00")
    json.dumps(st)  # JSON-serialisable as is
    # Another process (the CLI) sees the agent's last repair through the state file.
    other = Installer(env.config()).status()
    assert other["last_repair"] == st["last_repair"]


def test_repair_counts_only_real_repairs(env: Env) -> None:
    path = env.write_conf("10-calico.conflist", CALICO)
    inst = Installer(env.config())
    before = metrics.repairs_total("entry_missing")
    assert inst.repair() is RepairOutcome.INSTALLED  # first install is not a repair
    assert inst.repair() is RepairOutcome.OK
    assert metrics.repairs_total("entry_missing") == before
    env.write_conf(path.name, CALICO)
    assert inst.repair() is RepairOutcome.REPAIRED
    assert metrics.repairs_total("entry_missing") == before + 1


def test_repair_reports_failure_without_raising(env: Env) -> None:
    env.write_conf("10-calico.conflist", CALICO)
    inst = Installer(env.config())
    inst.install()
    os.unlink(env.binary)
    env.plugin.unlink()
    assert inst.repair() is RepairOutcome.FAILED
    assert inst.check().problems == ("binary_missing",)


def test_symlinked_conflist_stays_a_symlink(env: Env) -> None:
    real_dir = env.root / "calico-owned"
    real_dir.mkdir()
    real = real_dir / "10-calico.conflist"
    real.write_text(json.dumps(CALICO))
    link = env.net_dir / "10-calico.conflist"
    link.symlink_to(real)
    Installer(env.config()).install()
    assert link.is_symlink()
    assert len(our_entries(real)) == 1
    assert sorted(p.name for p in real_dir.iterdir()) == ["10-calico.conflist"]
    Installer(env.config()).uninstall()
    assert link.is_symlink()
    assert read_json(real) == CALICO
