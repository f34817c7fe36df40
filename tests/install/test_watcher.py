"""Real inotify on temp dirs: another CNI rewrites, replaces or deletes; we repair in < 1 s."""

from __future__ import annotations

import copy
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.install import Installer, metrics
from agent.install.throttle import RepairThrottle
from tests.install import CALICO, OUR_TYPE, Env, make_env, our_entries, read_json, wait_until

REPAIR_DEADLINE = 1.0


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return make_env(tmp_path)


@pytest.fixture
def running(env: Env) -> Iterator[Installer]:
    env.write_conf("10-calico.conflist", CALICO)
    inst = Installer(env.config())
    inst.start()
    assert inst.check().ready
    yield inst
    inst.stop(upgrade=True)


def calico_path(env: Env) -> Path:
    return env.net_dir / "10-calico.conflist"


def entry_back(path: Path) -> bool:
    return len(our_entries(path)) == 1


def test_overwrite_in_place(env: Env, running: Installer) -> None:
    before = metrics.repairs_total("entry_missing")
    with open(calico_path(env), "w") as f:  # truncate + write, same inode
        f.write(json.dumps(CALICO, indent=4))
    assert not entry_back(calico_path(env))
    wait_until(lambda: entry_back(calico_path(env)), REPAIR_DEADLINE)
    wait_until(lambda: metrics.repairs_total("entry_missing") == before + 1, 0.5)
    assert read_json(calico_path(env))["plugins"][:-1] == CALICO["plugins"]


def test_slow_writer_is_not_read_half_written(env: Env, running: Installer) -> None:
    """A writer that pauses mid-file: we wait for its close instead of acting on half a file.

    A naive watcher would find 10-calico invalid during the pause, take 20-other.conf as
    primary and wrap it (deleting 20-other.conf).
    """
    other = env.write_conf("20-other.conf", {"cniVersion": "1.0.0", "name": "o", "type": "ptp"})
    time.sleep(0.2)  # let the watcher settle on the new file (no change: not primary)
    data = json.dumps(CALICO).encode()
    with open(calico_path(env), "wb") as f:
        f.write(data[:10])
        f.flush()
        time.sleep(0.3)  # longer than the debounce, shorter than the max delay
        assert os.stat(calico_path(env)).st_ino == os.fstat(f.fileno()).st_ino
        f.write(data[10:])
    wait_until(lambda: entry_back(calico_path(env)), REPAIR_DEADLINE)
    assert other.exists()
    assert not (env.net_dir / "20-other.conflist").exists()


def test_replace_via_rename(env: Env, running: Installer) -> None:
    before = metrics.repairs_total("entry_missing")
    tmp = env.net_dir / "calico.tmp.123"
    tmp.write_text(json.dumps(CALICO))
    os.rename(tmp, calico_path(env))
    wait_until(lambda: entry_back(calico_path(env)), REPAIR_DEADLINE)
    wait_until(lambda: metrics.repairs_total("entry_missing") == before + 1, 0.5)


def test_delete_and_recreate(env: Env, running: Installer) -> None:
    calico_path(env).unlink()
    time.sleep(0.2)  # the watcher sees no config at all and waits
    assert not running.ready()
    env.write_conf("10-calico.conflist", CALICO)
    wait_until(lambda: entry_back(calico_path(env)), REPAIR_DEADLINE)
    assert running.ready()


def test_delete_primary_falls_back_to_next(env: Env, running: Installer) -> None:
    other = env.write_conf("20-other.conf", {"cniVersion": "1.0.0", "name": "o",
                                             "type": "ptp"})
    before = metrics.repairs_total("primary_changed")
    calico_path(env).unlink()
    wrapped = env.net_dir / "20-other.conflist"
    wait_until(lambda: entry_back(wrapped), REPAIR_DEADLINE)
    # The .conflist is written first, then the .conf it replaces is removed.
    wait_until(lambda: not other.exists(), 0.5)
    wait_until(lambda: metrics.repairs_total("primary_changed") == before + 1, 0.5)


def test_new_primary_appears(env: Env, running: Installer) -> None:
    new = env.write_conf("05-cilium.conflist", {"name": "cilium", "cniVersion": "0.3.1",
                                                "plugins": [{"type": "cilium-cni"}]})
    wait_until(lambda: entry_back(new), REPAIR_DEADLINE)
    wait_until(lambda: our_entries(calico_path(env)) == [], 0.5)  # stale one taken out


def test_binary_deleted(env: Env, running: Installer) -> None:
    before = metrics.repairs_total("binary_missing")
    env.binary.unlink()
    wait_until(env.binary.exists, REPAIR_DEADLINE)
    assert env.binary.read_bytes() == env.plugin.read_bytes()
    assert os.access(env.binary, os.X_OK)
    wait_until(lambda: metrics.repairs_total("binary_missing") == before + 1, 0.5)


def test_binary_replaced(env: Env, running: Installer) -> None:
    before = metrics.repairs_total("binary_changed")
    env.binary.write_bytes(b"#!/bin/sh\necho impostor\n")
    wait_until(lambda: env.binary.read_bytes() == env.plugin.read_bytes(), REPAIR_DEADLINE)
    wait_until(lambda: metrics.repairs_total("binary_changed") == before + 1, 0.5)


def test_unrelated_files_do_not_trigger_repairs(env: Env, running: Installer) -> None:
    snapshot = calico_path(env).read_bytes(), os.stat(calico_path(env)).st_ino
    (env.net_dir / "calico-kubeconfig").write_text("x")
    (env.bin_dir / "bridge").write_bytes(b"x")
    env.write_conf("99-loopback.conf", {"cniVersion": "1.0.0", "name": "lo",
                                        "type": "loopback"})
    time.sleep(0.3)
    assert (calico_path(env).read_bytes(), os.stat(calico_path(env)).st_ino) == snapshot
    assert read_json(env.net_dir / "99-loopback.conf")["type"] == "loopback"


def test_waits_for_primary_then_installs(env: Env) -> None:
    inst = Installer(env.config())
    inst.start()
    try:
        assert not inst.ready()
        assert env.binary.exists()  # the binary goes in first, the entry when it can
        path = env.write_conf("10-calico.conflist", CALICO)
        wait_until(lambda: entry_back(path), REPAIR_DEADLINE)
        assert inst.ready()
    finally:
        inst.stop()


def test_stopped_watcher_repairs_nothing(env: Env, running: Installer) -> None:
    running.stop(upgrade=True)
    env.binary.unlink()
    time.sleep(0.3)
    assert not env.binary.exists()


def test_fighting_loop_is_throttled(env: Env) -> None:
    env.write_conf("10-calico.conflist", CALICO)
    inst = Installer(env.config(throttle_burst=3, throttle_rate=1.0))
    inst.start()
    path = calico_path(env)
    stop = threading.Event()
    fights = 0

    def other_cni() -> None:  # deletes foreign entries as soon as it sees them
        nonlocal fights
        while not stop.is_set():
            doc = read_json(path) if path.exists() else None
            if doc and any(p.get("type") == OUR_TYPE for p in doc["plugins"]):
                tmp = env.net_dir / "other.tmp"
                tmp.write_text(json.dumps(CALICO))
                os.rename(tmp, path)
                fights += 1
            time.sleep(0.01)

    before = metrics.repairs_total("entry_missing")
    throttled = metrics.throttled_total()
    t = threading.Thread(target=other_cni)
    t.start()
    duration = 2.0
    time.sleep(duration)
    stop.set()
    t.join()
    repairs = metrics.repairs_total("entry_missing") - before
    try:
        # burst + rate * duration (+1 for timing slack), where an unthrottled loop does ~30
        assert 3 <= repairs <= 3 + 1.0 * duration + 1
        assert metrics.throttled_total() > throttled
        # Once the other agent stops, our entry comes back.
        wait_until(lambda: entry_back(path), 1.0 / 1.0 + REPAIR_DEADLINE)
    finally:
        inst.stop()


def test_throttle_token_bucket() -> None:
    now = [100.0]
    th = RepairThrottle(burst=2, rate=0.5, clock=lambda: now[0])
    assert th.delay() == 0.0
    assert th.delay() == 0.0
    assert th.delay() == pytest.approx(2.0)
    now[0] += 2.0
    assert th.delay() == 0.0
    assert th.delay() == pytest.approx(2.0)
    with pytest.raises(ValueError):
        RepairThrottle(burst=0)


def test_dir_recreated(env: Env, running: Installer) -> None:
    """net.d removed and made again (e.g. a CNI reinstall): the watch is re-added."""
    doc = copy.deepcopy(CALICO)
    for p in env.net_dir.iterdir():
        p.unlink()
    env.net_dir.rmdir()
    time.sleep(0.2)
    env.net_dir.mkdir()
    time.sleep(0.2)  # the watcher re-adds its watch on the new dir
    path = env.write_conf("10-calico.conflist", doc)
    wait_until(lambda: entry_back(path), REPAIR_DEADLINE)


def test_failed_repair_is_retried(env: Env, running: Installer) -> None:
    """Binary gone and nothing to copy it from: the repair fails, and is retried later."""
    source = env.plugin.read_bytes()
    env.plugin.unlink()
    env.binary.unlink()
    time.sleep(0.3)
    assert not env.binary.exists() and not running.ready()
    env.plugin.write_bytes(source)  # outside the watched dirs: only a retry can notice
    wait_until(env.binary.exists, 2.0)
    assert running.ready()


def test_dir_moved_away_and_replaced(env: Env, running: Installer) -> None:
    """net.d renamed away and a new one put in its place: we follow the path, not the inode."""
    moved = env.root / "old-net.d"
    os.rename(env.net_dir, moved)
    env.net_dir.mkdir()
    time.sleep(0.2)
    path = env.write_conf("10-calico.conflist", CALICO)
    wait_until(lambda: entry_back(path), REPAIR_DEADLINE)
    # The old directory is no longer ours to watch: changes there are left alone.
    (moved / "10-calico.conflist").write_text(json.dumps(CALICO))
    time.sleep(0.3)
    assert our_entries(moved / "10-calico.conflist") == []
