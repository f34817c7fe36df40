"""Outlier detection timelines on a fake clock: consecutive errors eject, max_ejection_percent
caps, sweeps return endpoints after base_ejection_time x ejections, and the picker honours
ejections, the panic threshold and locality failover."""

from __future__ import annotations

import random
import time

import pytest

from core.mesh.model import LbMode, LbScope
from core.mesh.traffic import ConnectionPool, OutlierDetection, SimpleLb
from proxy.traffic.active import ActiveConnections
from proxy.traffic.cluster import Cluster, ClusterKey
from proxy.traffic.outlier import Outcome, OutlierDetector
from proxy.traffic.policy import ClusterPolicy
from proxy.traffic.refusal import Reason, Refused
from tests.traffic.fakes import FakeClock, service, workload

CF, OK, RESET, CLOSED = (Outcome.CONNECT_FAILED, Outcome.CONNECTED, Outcome.RESET,
                         Outcome.CLOSED)
HOSTS = [f"h{i}" for i in range(4)]


def detector(clock: FakeClock, hosts: list[str] = HOSTS, **kw: float) -> OutlierDetector:
    cfg = {"max_ejection_percent": 100, **kw}
    d = OutlierDetector(OutlierDetection(**cfg), clock)  # type: ignore[arg-type]
    d.set_hosts(hosts)
    return d


def feed(d: OutlierDetector, uid: str, *outcomes: Outcome) -> None:
    for o in outcomes:
        d.record(uid, o)


def test_five_consecutive_connect_failures_eject() -> None:
    d = detector(FakeClock())
    feed(d, "h0", CF, CF, CF, CF)
    assert d.ejected() == frozenset()
    feed(d, "h0", CF)
    assert d.ejected() == {"h0"}


def test_a_clean_close_breaks_the_streak() -> None:
    d = detector(FakeClock())
    feed(d, "h0", CF, CF, CF, CF, OK, CLOSED, CF, CF, CF, CF)
    assert d.ejected() == frozenset()


def test_resets_are_5xx_errors_and_connects_do_not_clear_them() -> None:
    # Every connection connects, then is reset by the upstream: five in a row eject.
    d = detector(FakeClock())
    for _ in range(4):
        feed(d, "h1", OK, RESET)
    assert d.ejected() == frozenset()
    feed(d, "h1", OK, RESET)
    assert d.ejected() == {"h1"}


def test_gateway_errors_count_connect_failures_only() -> None:
    d = detector(FakeClock(), consecutive_gateway_errors=3, consecutive_5xx_errors=0)
    feed(d, "h0", CF, CF, OK, CF, CF)  # a connect in between: the gateway streak restarts
    feed(d, "h1", RESET, RESET, RESET, RESET)  # resets are not gateway errors
    assert d.ejected() == frozenset()
    feed(d, "h0", CF)
    assert d.ejected() == {"h0"}


def test_a_zero_threshold_disables_its_detector() -> None:
    d = detector(FakeClock(), consecutive_5xx_errors=0)
    feed(d, "h0", *[CF] * 50)
    assert d.ejected() == frozenset()


def test_max_ejection_percent_as_envoy_counts_it() -> None:
    # Istio's default 10% on 3 endpoints: 100 * 1/3 > 10, so nothing is ever ejected
    # (Envoy ejects "at least one" only with always_eject_one_host, which Istio never sets).
    d = detector(FakeClock(), hosts=HOSTS[:3], max_ejection_percent=10)
    feed(d, "h0", *[CF] * 10)
    assert d.ejected() == frozenset() and d.overflows == 2
    # 50% of 4: two ejections, the third refused.
    d = detector(FakeClock(), max_ejection_percent=50)
    for h in HOSTS[:3]:
        feed(d, h, *[CF] * 5)
    assert d.ejected() == {"h0", "h1"} and d.overflows == 1


def test_ejection_and_return_timeline() -> None:
    # interval 10s, base 30s; sweeps at 10, 20, 30, ... from the detector's creation.
    clock = FakeClock()
    d = detector(clock)
    clock.now = 1.0
    feed(d, "h0", *[CF] * 5)  # ejected at t=1 for 30s: due at 31, returned at sweep 40
    for t, ejected in ((30.9, True), (31.0, True), (39.99, True), (40.0, False)):
        clock.now = t
        assert ("h0" in d.ejected()) is ejected, t
    # Failing again right away: the second ejection lasts 2 x 30s.
    clock.now = 41.0
    feed(d, "h0", *[CF] * 4)
    assert d.ejected() == frozenset()  # the return restarted the streak
    feed(d, "h0", CF)
    clock.now = 100.0
    assert d.ejected() == {"h0"}  # due at 101
    clock.now = 109.9
    assert d.ejected() == {"h0"}
    clock.now = 110.0
    assert d.ejected() == frozenset()


def test_time_in_service_shrinks_the_backoff() -> None:
    clock = FakeClock()
    d = detector(clock)
    feed(d, "h0", *[CF] * 5)  # t=0, due 30, returned at sweep 30
    clock.now = 30.0
    assert d.ejected() == frozenset()
    clock.now = 45.0  # sweep 40: a full interval back in service, the multiplier drops to 0
    feed(d, "h0", *[CF] * 5)  # so this ejection is 1 x 30s again: due 75, returned at 80
    clock.now = 79.9
    assert d.ejected() == {"h0"}
    clock.now = 80.0
    assert d.ejected() == frozenset()
    assert d.dump()["h0"]["ejections"] == 2


def test_ejection_time_is_capped_at_envoys_max() -> None:
    clock = FakeClock()
    d = detector(clock, base_ejection_time=100.0)  # max_ejection_time stays 300s
    durations = []
    for _ in range(4):
        start = clock.now
        feed(d, "h0", *[CF] * 5)
        while "h0" in d.ejected():
            clock.advance(10.0)
        durations.append(clock.now - start)
    assert durations == [100.0, 200.0, 300.0, 300.0]


def test_sweeps_jump_over_idle_time() -> None:
    clock = FakeClock()
    d = detector(clock, interval=0.001, base_ejection_time=0.001)
    feed(d, "h0", *[CF] * 5)
    clock.now = 1e6  # a billion sweeps, none of which can change anything after the first
    started = time.monotonic()
    assert d.ejected() == frozenset()
    assert time.monotonic() - started < 1.0


class EverySweep(OutlierDetector):
    """The reference: every sweep run one by one, as Envoy's timer does."""

    def advance(self, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        while self._sweep_time(self._next) <= now + 1e-9:
            self._sweep(self._sweep_time(self._next))
            self._next += 1


@pytest.mark.parametrize("seed", range(40))
def test_bulk_sweeps_equal_sweeping_one_by_one(seed: int) -> None:
    rng = random.Random(seed)
    cfg = OutlierDetection(consecutive_5xx_errors=rng.randint(1, 3),
                           consecutive_gateway_errors=rng.randint(0, 2),
                           interval=rng.choice([1.0, 2.5, 10.0]),
                           base_ejection_time=rng.choice([1.0, 3.0, 30.0]),
                           max_ejection_percent=rng.choice([25, 50, 100]))
    clock = FakeClock()
    fast, slow = OutlierDetector(cfg, clock), EverySweep(cfg, clock)
    for d in (fast, slow):
        d.set_hosts(HOSTS)
    for _ in range(400):
        clock.advance(rng.choice([0.0, 0.1, 0.5, 1.0, 3.0, 7.0, 40.0]))
        uid, outcome = rng.choice(HOSTS), rng.choice([CF, CF, CF, OK, RESET, CLOSED])
        fast.record(uid, outcome)
        slow.record(uid, outcome)
        assert fast.dump() == slow.dump(), clock.now


def test_a_removed_endpoint_frees_its_ejection() -> None:
    d = detector(FakeClock(), max_ejection_percent=25)
    feed(d, "h0", *[CF] * 5)
    feed(d, "h1", *[CF] * 5)
    assert d.ejected() == {"h0"}
    d.set_hosts(["h1", "h2", "h3", "h4"])
    feed(d, "h1", *[CF] * 5)
    assert d.ejected() == {"h1"}
    d.record("gone", CF)  # a result for an endpoint that left: ignored


# ---- the picker ------------------------------------------------------------------------------

SVC = service("api", "10.96.0.50")


def cluster(clock: FakeClock, lb: SimpleLb = SimpleLb.ROUND_ROBIN,
            **kw: float) -> Cluster:
    od = OutlierDetection(**{"max_ejection_percent": 100, **kw})  # type: ignore[arg-type]
    return Cluster(ClusterKey(SVC.key, 80), ClusterPolicy(lb, ConnectionPool(), od), clock,
                   random.Random(0), ActiveConnections())


def test_an_ejected_endpoint_gets_no_connections_until_it_returns() -> None:
    clock = FakeClock()
    eps = tuple(workload(f"e{i}", f"10.0.5.{i}", [SVC]) for i in range(3))
    c = cluster(clock)
    c.pick(SVC, eps, None)
    assert c.detector is not None
    feed(c.detector, "uid-e1", *[CF] * 5)
    assert {c.pick(SVC, eps, None).name for _ in range(30)} == {"e0", "e2"}
    clock.now = 30.0
    assert {c.pick(SVC, eps, None).name for _ in range(30)} == {"e0", "e1", "e2"}


def test_panic_threshold_ignores_ejections() -> None:
    clock = FakeClock()
    eps = tuple(workload(f"e{i}", f"10.0.5.{i}", [SVC]) for i in range(4))
    calm, panicky = cluster(clock), cluster(clock, min_health_percent=50)
    for c in (calm, panicky):
        c.pick(SVC, eps, None)
        assert c.detector is not None
        for name in ("uid-e0", "uid-e1"):
            feed(c.detector, name, *[CF] * 5)
    # Half remain: 50% is not below 50%, ejections hold for both.
    assert {panicky.pick(SVC, eps, None).name for _ in range(20)} == {"e2", "e3"}
    for c in (calm, panicky):
        assert c.detector is not None
        feed(c.detector, "uid-e2", *[CF] * 5)
    assert {calm.pick(SVC, eps, None).name for _ in range(20)} == {"e3"}
    # 25% < 50%: panic, every endpoint again (Envoy's healthy_panic_threshold).
    assert {panicky.pick(SVC, eps, None).name for _ in range(20)} == {"e0", "e1", "e2", "e3"}
    assert calm.detector is not None
    feed(calm.detector, "uid-e3", *[CF] * 5)
    with pytest.raises(Refused) as refused:
        calm.pick(SVC, eps, None)  # minHealthPercent 0: no panic, nothing left
    assert refused.value.reason == Reason.NO_HEALTHY_ENDPOINT
    assert "all 4 endpoints are ejected" in refused.value.detail


def test_an_ejected_local_endpoint_fails_over_to_the_next_locality() -> None:
    svc = service("api", "10.96.0.51", lb_mode=LbMode.FAILOVER,
                  lb_routing_preference=(LbScope.REGION, LbScope.ZONE))
    client = workload("client", "10.0.0.1", loc=("r1", "z1", ""))
    near = workload("near", "10.0.6.1", [svc], loc=("r1", "z1", ""))
    zone = workload("zone", "10.0.6.2", [svc], loc=("r1", "z2", ""))
    far = workload("far", "10.0.6.3", [svc], loc=("r2", "z1", ""))
    c = cluster(FakeClock())
    eps = (near, zone, far)
    assert {c.pick(svc, eps, client).name for _ in range(5)} == {"near"}
    assert c.detector is not None
    feed(c.detector, "uid-near", *[CF] * 5)
    assert {c.pick(svc, eps, client).name for _ in range(5)} == {"zone"}


def test_a_changed_outlier_config_starts_afresh() -> None:
    clock = FakeClock()
    eps = tuple(workload(f"e{i}", f"10.0.5.{i}", [SVC]) for i in range(2))
    c = cluster(clock)
    c.pick(SVC, eps, None)
    assert c.detector is not None
    feed(c.detector, "uid-e0", *[CF] * 5)
    same = ClusterPolicy(SimpleLb.RANDOM, ConnectionPool(), c.policy.outlier)
    c.update(same)
    assert c.detector.ejected() == {"uid-e0"}  # only the balancer changed
    c.update(ClusterPolicy(SimpleLb.RANDOM, ConnectionPool(),
                           OutlierDetection(consecutive_5xx_errors=2)))
    assert c.detector.ejected() == frozenset()
    assert {c.pick(SVC, eps, None).name for _ in range(20)} == {"e0", "e1"}
