"""The identity manager: renewal at half-life, backoff with the old certificate kept, pods
reference-counting identities, and following the discovery state."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from agent.identity.bundle import CertBundle, bundle_from_response
from agent.identity.csr import make_csr
from agent.identity.manager import IdentityConfig, IdentityManager
from agent.xds.state import XdsState
from core.mesh.model import Workload
from tests.identity.cp import ECHO, SLEEP, ca_client, control_plane
from tests.xds.helpers import Ca, run, until

FAST = IdentityConfig(initial_backoff=0.05, max_backoff=0.4, min_refresh_seconds=0.05)


class FakeSource:
    """Signs with a local CA; can be told to fail. Counts calls per identity."""

    def __init__(self, ttl: float = 3600, backdate: float = 0.0) -> None:
        self.ca = Ca.new()
        self.ttl = ttl
        self.backdate = backdate
        self.fail = False
        self.calls: list[tuple[str, float]] = []

    async def fetch(self, identity: str) -> CertBundle:
        self.calls.append((identity, time.monotonic()))
        if self.fail:
            raise ConnectionError("CA unreachable")
        kc = make_csr(identity)
        leaf = self.ca.sign_csr(kc.csr_pem, self.ttl, self.backdate)
        return bundle_from_response(identity, kc.key, kc.key_pem(), [leaf, self.ca.pem.decode()])


def test_renews_at_half_life_with_a_new_key_from_the_real_ca(tmp_path: Path) -> None:
    async def main() -> None:
        cp = control_plane(tmp_path)
        await cp.start()
        ca = ca_client(tmp_path, cp, ttl=3)       # the CA backdates not_before by 5 min
        m = IdentityManager(ca, FAST)
        got: list[tuple[str, CertBundle | None, float]] = []
        m.subscribe(lambda i, b: got.append((i, b, time.time())))
        try:
            m.add_pod("pod-1", SLEEP)
            first = await m.wait_for(SLEEP, 5)
            assert first is not None and m.status(SLEEP) == "Available"
            await until(lambda: len(got) >= 2, timeout=5, what="a renewal")
            (_, b1, t1), (_, b2, t2) = got[0], got[1]
            assert b1 is first and b2 is not None
            assert b2.serial != b1.serial and b2.key_pem != b1.key_pem
            # Half of the 2-3 s (whole-second not_after) the certificate was usable for; not
            # half of the backdated lifetime.
            assert 0.9 < t2 - t1 < 1.8, t2 - t1
            assert m.get(SLEEP) is b2
        finally:
            await m.close()
            await ca.close()
            await cp.stop()
    run(main())


def test_ca_outage_keeps_the_old_cert_backs_off_and_recovers(tmp_path: Path) -> None:
    async def main() -> None:
        cp = control_plane(tmp_path)
        port = (await cp.start())
        ca = ca_client(tmp_path, cp, ttl=3)
        m = IdentityManager(ca, IdentityConfig(initial_backoff=0.1, max_backoff=0.4,
                                               min_refresh_seconds=0.05))
        try:
            m.add_pod("pod-1", ECHO)
            old = await m.wait_for(ECHO, 5)
            assert old is not None
            await cp.stop()
            await until(lambda: m.status(ECHO) == "Available" and
                        m._entries[ECHO].error != "", timeout=4, what="a failed refresh")
            assert m.get(ECHO) is old                  # still in use while valid
            await asyncio.sleep(0.5)
            assert m.get(ECHO) is old
            cp = control_plane(tmp_path, port)
            await cp.start()
            await until(lambda: (b := m.get(ECHO)) is not None and b.serial != old.serial,
                        timeout=5, what="a new certificate after the CA returns")
            assert m.status(ECHO) == "Available" and m._entries[ECHO].error == ""
        finally:
            await m.close()
            await ca.close()
            await cp.stop()
    run(main())


def test_failures_back_off_exponentially() -> None:
    async def main() -> None:
        src = FakeSource()
        src.fail = True
        m = IdentityManager(src, IdentityConfig(initial_backoff=0.04, max_backoff=10))
        m.add_pod("p", SLEEP)
        await until(lambda: len(src.calls) >= 5, timeout=5, what="five attempts")
        await m.close()
        gaps = [b[1] - a[1] for a, b in zip(src.calls, src.calls[1:], strict=False)]
        for n, gap in enumerate(gaps[:4]):
            d = 0.04 * 2 ** n
            assert d / 2 - 0.01 < gap < d + 0.1, gaps
        assert m.get(SLEEP) is None
    run(main())


def test_backdated_short_cert_is_not_renewed_in_a_loop() -> None:
    async def main() -> None:
        src = FakeSource(ttl=4, backdate=300)
        m = IdentityManager(src, FAST)
        m.add_pod("p", SLEEP)
        await m.wait_for(SLEEP, 2)
        await asyncio.sleep(0.8)
        assert len(src.calls) == 1, src.calls     # next one due 1.5-2 s after issue
        await until(lambda: len(src.calls) == 2, timeout=3, what="the half-life renewal")
        await m.close()
    run(main())


def test_expired_cert_without_replacement_is_withdrawn() -> None:
    async def main() -> None:
        src = FakeSource(ttl=1)
        m = IdentityManager(src, IdentityConfig(initial_backoff=5, max_backoff=5,
                                                min_refresh_seconds=0.05))
        events: list[CertBundle | None] = []
        m.subscribe(lambda _i, b: events.append(b))
        m.add_pod("p", SLEEP)
        assert await m.wait_for(SLEEP, 2) is not None
        src.fail = True
        # The renewal fails; the retry is pulled in to the expiry, fails too: withdrawn.
        await until(lambda: events[-1] is None, timeout=4, what="withdrawal at expiry")
        assert m.get(SLEEP) is None and m.status(SLEEP).startswith("Unavailable: ")
        await m.close()
    run(main())


def test_identity_lives_while_one_of_its_pods_does() -> None:
    async def main() -> None:
        src = FakeSource()
        m = IdentityManager(src, FAST)
        events: list[tuple[str, bool]] = []
        m.subscribe(lambda i, b: events.append((i, b is not None)))
        m.add_pod("a", SLEEP)
        m.add_pod("b", SLEEP)
        m.add_pod("c", ECHO)
        assert await m.wait_for(SLEEP, 2) and await m.wait_for(ECHO, 2)
        assert len(src.calls) == 2 and m.identities() == sorted([SLEEP, ECHO])
        m.remove_pod("a")
        assert m.get(SLEEP) is not None
        m.remove_pod("b")
        assert m.get(SLEEP) is None and (SLEEP, False) in events
        assert m.status(SLEEP) == "Unavailable: the identity is no longer needed"
        m.add_pod("c", SLEEP)                    # pod changed service account
        assert m.identities() == [SLEEP]
        late: list[str] = []
        await m.wait_for(SLEEP, 2)
        m.subscribe(lambda i, b: late.append(i))  # a new subscriber gets what is held
        assert late == [SLEEP]
        await m.close()
    run(main())


def test_follows_the_local_workloads_of_the_discovery_state() -> None:
    async def main() -> None:
        st = XdsState(local_node="node1")

        def w(uid: str, sa: str, node: str = "node1") -> Workload:
            return Workload(uid=uid, name=uid, namespace="default", addresses=("10.0.0.1",),
                            service_account=sa, node=node)
        st.apply([w("a", "sleep")])
        m = IdentityManager(FakeSource(), FAST)
        m.follow(st)
        assert m.identities() == [SLEEP]                  # already there
        st.apply([w("b", "echo"), w("r", "remote", node="node2")])
        assert m.identities() == sorted([SLEEP, ECHO])    # remote pods are not ours
        st.apply([w("b", "echo", node="node2")])          # moved away
        assert m.identities() == [SLEEP]
        st.apply(removed_addresses=["a"])
        assert m.identities() == []
        await m.close()
    run(main())
