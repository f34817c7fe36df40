"""libnftables under the agent's conditions: many threads at once (a burst of pod starts)
and a process with many open files. libnftables keeps some state process-wide and waits on
its netlink socket with select(); either can abort the whole process, so each run happens in
a child process: an abort must fail the test, not kill the test runner.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from testing.agent_harness import REPO

CHILD = textwrap.dedent("""
    import threading
    from testing.lab import Lab
    from agent.redirect import backend as engine
    from agent.redirect.spec import RedirectSpec

    impl = engine.make_backend("nftables")
    spec = RedirectSpec()
    with Lab("nt") as lab:
        nodes = [lab.node(f"p{i}") for i in range(6)]
        errors = []

        def churn(path):
            try:
                for _ in range(40):
                    engine.apply(path, spec, impl)
                    assert engine.diff(path, spec, impl).in_sync
                    engine.remove(path, spec, impl)
            except BaseException as exc:
                errors.append(repr(exc))

        threads = [threading.Thread(target=churn, args=(n.path,)) for n in nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
    print("ok")
""")


def test_concurrent_nftables_transactions_do_not_crash() -> None:
    r = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                       timeout=240, cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-3000:])


HIGH_FDS = textwrap.dedent("""
    import os, resource
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    held = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]  # a busy agent
    from testing.lab import Lab
    from agent.redirect import backend as engine
    from agent.redirect.spec import RedirectSpec

    impl, spec = engine.make_backend("nftables"), RedirectSpec()
    with Lab("nf") as lab:
        pod = lab.node("p")
        engine.apply(pod.path, spec, impl)
        assert engine.diff(pod.path, spec, impl).in_sync
        engine.remove(pod.path, spec, impl)
        assert not engine.read(pod.path, spec, impl).rules
    print("ok")
""")


def test_a_process_with_over_1024_open_files_still_applies_nftables() -> None:
    """libnftables select()s on its netlink socket: at fd 1024 or above glibc aborts the
    process. The backend must not hand it such a socket."""
    r = subprocess.run([sys.executable, "-c", HIGH_FDS], capture_output=True, text=True,
                       timeout=120, cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-3000:])
