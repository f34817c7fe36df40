"""`meshnode demo` for real, as a user runs it: a subprocess, its report and verdict, and
nothing of it left afterwards (netns, processes, work dir, cgroups) — also after a Ctrl-C
in the middle of the run."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("containerd", "ctr", "runc", "containerd-shim-runc-v2", "busybox", "nsenter",
         "unshare", "ip")

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(150)]


@pytest.fixture(autouse=True)
def _tools() -> None:
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        # make setup installs them all: a missing one is a broken setup, not a skip.
        pytest.fail(f"missing tools (run make setup): {', '.join(missing)}")


def start(*args: str) -> subprocess.Popen[str]:
    # A process group of its own, as a shell gives a foreground job: Ctrl-C is then
    # SIGINT to that group (the demo and whatever short-lived tools it is running).
    return subprocess.Popen([sys.executable, "-m", "cli.main", "demo", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=_default_sigint)


def _default_sigint() -> None:
    """A terminal's foreground job gets SIGINT's default action. A suite started from a
    non-interactive shell in the background inherits SIGINT ignored, and Python keeps an
    ignored SIGINT ignored: the demo would never see the Ctrl-C this test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def leftovers(pid: int, out: str) -> list[str]:
    """What a finished demo (PID `pid`, output `out`) left behind: its netns (tagged with
    its PID by testing.lab), processes naming its work dir, the work dir, containerd cgroups."""
    found = []
    m = re.search(r"work dir (/\S+?),", out)
    assert m, "the demo names its work dir"
    work = m.group(1)
    tag = f"mndemo{pid % 100000}x"
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [f"netns {n.split()[0]}" for n in names.splitlines() if n.startswith(tag)]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if work in cmd:
                found.append(f"pid {entry.name}: {cmd[:80]}")
    if Path(work).exists():
        found.append(f"dir {work}")
    cg = Path("/sys/fs/cgroup")
    found += [str(p) for p in [*cg.glob(f"mndemo-{pid}-*"), *cg.glob(f"*/mndemo-{pid}-*")]]
    return found


def test_demo_runs_reports_and_cleans_up() -> None:
    t0 = time.monotonic()
    p = start("--backend", "nftables")
    out, _ = p.communicate(timeout=120)
    took = time.monotonic() - t0
    assert p.returncode == 0, out
    assert took < 60, f"the demo took {took:.0f}s"
    for n in range(1, 9):
        assert f"[{n}/8]" in out, out
    for section in ("== pods", "== traffic", "== connections the proxies saw",
                    "== denied by policy", "redirect rules: meshnode redirect show"):
        assert section in out, f"missing section {section!r}:\n{out}"
    # every pod enrolled, on the backend asked for
    for pod in ("frontend", "batch", "backend"):
        assert re.search(rf"node\d\s+{pod}\s+\S+\s+enrolled\s+nftables", out), out
    # identities on both hops of the mesh path, and the bytes
    assert re.search(r"node2 inbound\s+hbone frontend -> backend", out), out
    assert "spiffe://cluster.local/ns/demo/sa/frontend -> " \
           "spiffe://cluster.local/ns/demo/sa/backend" in out
    assert re.search(r"[1-9]\d* B sent, \d+ B received", out), out
    # the denied connection: batch -> backend, by the policy, seen by node2's proxy
    denied = out.split("== denied by policy", 1)[1]
    assert "spiffe://cluster.local/ns/demo/sa/batch" in denied
    assert "demo/deny-batch-to-backend" in denied
    assert "status 401" in out
    assert "refused" in out and "outside (198.18.44.1:8080)" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("verdict: PASS"), out
    assert leftovers(p.pid, out) == []


@pytest.mark.parametrize("after", ["[2/8]", "[5/8]"])
def test_ctrl_c_midway_cleans_up(after: str) -> None:
    """Interrupted while the agents start (step 3 under way), and once pods exist
    (containerd, CNI and agents all holding state)."""
    p = start()
    assert p.stdout is not None
    seen = []
    for line in p.stdout:
        seen.append(line)
        if line.startswith(after):
            os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
            break
    rest, _ = p.communicate(timeout=60)
    out = "".join(seen) + rest
    assert p.returncode == 130, out
    assert "interrupted: cleaning up" in out
    assert "logs kept in" not in out  # a Ctrl-C is not a failure worth a leftover dir
    assert out.strip().splitlines()[-1].startswith("verdict: FAIL: interrupted"), out
    assert leftovers(p.pid, out) == []


@pytest.mark.parametrize("backend", ["iptables", "ebpf"])
def test_demo_other_backends(backend: str) -> None:
    p = start("--backend", backend)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0 and out.strip().splitlines()[-1].startswith("verdict: PASS"), out
    assert leftovers(p.pid, out) == []
