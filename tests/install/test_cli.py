"""`meshnode install status|apply|remove` (in-process, and one real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cli import main as cli
from tests.install import CALICO, OUR_TYPE, Env, make_env, our_entries, read_json

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return make_env(tmp_path)


def flags(env: Env) -> list[str]:
    return ["--cni-bin-dir", str(env.bin_dir), "--cni-net-dir", str(env.net_dir),
            "--plugin-source", str(env.plugin), "--state-file", str(env.state_file)]


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)


def test_status_json_subprocess(env: Env) -> None:
    path = env.write_conf("10-calico.conflist", CALICO)
    assert cli.main(["install", "apply", *flags(env), "-o", "json"]) == 0
    res = run(["install", "status", *flags(env), "-o", "json"])
    assert res.returncode == 0, res.stderr
    st = json.loads(res.stdout)  # stdout is pure JSON: logs go to stderr
    assert st["ready"] is True
    assert st["binary"]["path"] == str(env.binary) and st["binary"]["present"] is True
    assert len(st["binary"]["sha256"]) == 64
    assert st["conflist"]["path"] == str(path)
    assert st["entry"]["type"] == OUR_TYPE
    assert st["last_install"]["reason"] == "cli_apply"
    assert "last_repair" in st
    assert "Traceback" not in res.stderr


def test_status_not_installed_exits_1(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.write_conf("10-calico.conflist", CALICO)
    assert cli.main(["install", "status", *flags(env), "-o", "yaml"]) == 1
    st = yaml.safe_load(capsys.readouterr().out)
    assert st["ready"] is False
    assert st["problems"] == ["entry_missing", "binary_missing"]
    assert st["entry"] is None


def test_status_table(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.write_conf("10-calico.conflist", CALICO)
    (env.net_dir / "00-bad.conflist").write_text("{")
    cli.main(["install", "apply", *flags(env)])
    capsys.readouterr()
    assert cli.main(["install", "status", *flags(env)]) == 0
    out = capsys.readouterr().out
    assert "ready" in out and "yes" in out
    assert str(env.binary) in out
    assert "10-calico.conflist" in out
    assert "00-bad.conflist: invalid JSON" in out


def test_apply_then_remove(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    path = env.write_conf("10-calico.conflist", CALICO)
    assert cli.main(["install", "apply", *flags(env), "-o", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["changed"] is True and len(our_entries(path)) == 1
    assert cli.main(["install", "apply", *flags(env), "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] is False
    assert cli.main(["install", "remove", *flags(env), "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] is True
    assert read_json(path) == CALICO and not env.binary.exists()


def test_apply_without_primary_is_a_user_error(env: Env,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["install", "apply", *flags(env)]) == 2
    err = capsys.readouterr().err
    assert "error: no valid CNI config" in err
    assert "Traceback" not in err


def test_agent_socket_flag(env: Env) -> None:
    path = env.write_conf("10-calico.conflist", CALICO)
    assert cli.main(["install", "apply", *flags(env), "--agent-socket", "/run/x.sock"]) == 0
    assert our_entries(path)[0]["agent_socket"] == "/run/x.sock"
