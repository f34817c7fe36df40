"""libnftables from many threads at once, as the agent does under a burst of pod starts.

libnftables keeps some state process-wide (a context free releases its interface cache), so
overlapping calls corrupt its heap and abort the process. The run happens in a child
process: an abort must fail this test, not kill the test runner.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.agent.harness import REPO

CHILD = textwrap.dedent("""
    import threading
    from agent.lab import Lab
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
