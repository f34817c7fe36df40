"""Atomic copy of the plugin into the bin dir, stale temp files, atomic config writes."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from agent.install import atomic, binary
from agent.install.config import DEFAULT_PLUGIN_SOURCE
from tests.install import make_env

BUILD = Path(__file__).resolve().parents[2] / "cni" / "build.sh"


def test_copy_is_0755_and_identical(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    assert binary.install_binary(env.plugin, env.binary) is True
    assert env.binary.read_bytes() == env.plugin.read_bytes()
    assert stat.S_IMODE(os.stat(env.binary).st_mode) == 0o755
    info = binary.binary_info(env.binary)
    assert info.present and info.executable
    assert info.sha256 == hashlib.sha256(env.plugin.read_bytes()).hexdigest()
    assert sorted(p.name for p in env.bin_dir.iterdir()) == ["meshnode-cni"]  # no temp left


def test_second_copy_is_a_noop(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    binary.install_binary(env.plugin, env.binary)
    before = os.stat(env.binary)
    assert binary.install_binary(env.plugin, env.binary) is False
    after = os.stat(env.binary)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_changed_source_replaces_by_rename(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    binary.install_binary(env.plugin, env.binary)
    old_ino = os.stat(env.binary).st_ino
    with open(env.binary, "rb") as running:  # a plugin process still running the old file
        env.plugin.write_bytes(b"#!/bin/sh\nexit 1\n")
        assert binary.install_binary(env.plugin, env.binary) is True
        assert running.read() == b"#!/bin/sh\n# test stand-in for the plugin\nexit 0\n"
    assert os.stat(env.binary).st_ino != old_ino  # new inode: rename, not in-place write
    assert env.binary.read_bytes() == b"#!/bin/sh\nexit 1\n"


def test_wrong_mode_is_fixed(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    binary.install_binary(env.plugin, env.binary)
    os.chmod(env.binary, 0o644)
    assert binary.install_binary(env.plugin, env.binary) is True
    assert stat.S_IMODE(os.stat(env.binary).st_mode) == 0o755


def test_binary_info_missing_and_directory(tmp_path: Path) -> None:
    assert binary.binary_info(tmp_path / "nope").present is False
    (tmp_path / "dir").mkdir()
    assert binary.binary_info(tmp_path / "dir").present is False


def test_remove_binary(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    binary.install_binary(env.plugin, env.binary)
    assert binary.remove_binary(env.binary) is True
    assert not env.binary.exists()
    assert binary.remove_binary(env.binary) is False


def test_stale_temps_removed_fresh_ones_and_others_kept(tmp_path: Path) -> None:
    old = tmp_path / f".meshnode-cni.abc{atomic.TEMP_SUFFIX}"
    fresh = tmp_path / f".meshnode-cni.def{atomic.TEMP_SUFFIX}"
    other = tmp_path / "calico.tmp.123"
    for p in (old, fresh, other):
        p.write_bytes(b"x")
    past = time.time() - 3600
    os.utime(old, (past, past))
    os.utime(other, (past, past))
    removed = atomic.remove_stale_temps(tmp_path)
    assert removed == [old]
    assert not old.exists() and fresh.exists() and other.exists()
    assert atomic.remove_stale_temps(tmp_path / "missing") == []


def test_atomic_write_sets_mode_and_owner(tmp_path: Path) -> None:
    target = tmp_path / "10-x.conflist"
    atomic.atomic_write(target, b"{}\n", mode=0o600, uid=os.getuid(), gid=os.getgid())
    st = os.stat(target)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert target.read_bytes() == b"{}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["10-x.conflist"]


def test_atomic_write_failure_leaves_target_and_no_temp(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "10-x.conflist"
    target.write_bytes(b"old\n")

    def boom(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", boom)
    with pytest.raises(OSError):
        atomic.atomic_write(target, b"new\n", mode=0o644)
    assert target.read_bytes() == b"old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["10-x.conflist"]


def test_temp_names_are_not_config_names(tmp_path: Path) -> None:
    from agent.install import conflist

    tmp = atomic.temp_path_for(tmp_path / "10-calico.conflist")
    assert atomic.is_temp_name(tmp.name)
    assert not conflist.is_config_name(tmp.name)
    assert tmp.parent == tmp_path


def test_shipped_plugin_installs_and_runs(tmp_path: Path) -> None:
    """The real plugin (the static binary the installer ships), copied as a node gets it,
    answers VERSION from its new place: nothing beside it is needed."""
    build = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=600, check=False)
    assert build.returncode == 0, build.stderr
    dest = tmp_path / "bin" / "meshnode-cni"
    dest.parent.mkdir()
    assert binary.install_binary(DEFAULT_PLUGIN_SOURCE, dest) is True
    assert dest.read_bytes() == DEFAULT_PLUGIN_SOURCE.read_bytes()
    proc = subprocess.run([str(dest)], env={"CNI_COMMAND": "VERSION"}, capture_output=True,
                          timeout=10, check=False)
    assert proc.returncode == 0 and proc.stderr == b""
    assert proc.stdout == (b'{"cniVersion": "1.1.0", "supportedVersions": '
                           b'["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}\n')
