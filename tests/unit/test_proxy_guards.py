"""The node proxy's guards against one pod taking it down (issue 12), as pure logic: the
loop predicate, the per-key token bucket of the error logs, the connection limiter and
its configuration. The real thing, under attack, is tests/mesh/test_attack.py."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import ConfigError
from proxy.config import ProxyConfig
from proxy.limits import FD_RESERVE, FDS_PER_CONNECTION, Limiter, NodeLimits, Refused
from proxy.loopguard import capture_ports, loop_reason
from proxy.ratelimit import TokenBuckets

ROOT = Path(__file__).resolve().parents[2]
PORTS = capture_ports(15001, 15006, 15008, 15053)
POD = {"198.18.41.1", "fd00::1", "127.0.0.1", "::1"}


@pytest.mark.parametrize(("dst", "why"), [
    (("127.0.0.1", 15001), "loopback"),
    (("127.0.0.53", 15006), "loopback"),       # all of 127/8 is this host
    (("::1", 15008), "loopback"),
    (("::ffff:127.0.0.1", 15053), "loopback"),  # v4-mapped, as a dual-stack socket sees it
    (("0.0.0.0", 15001), "unspecified"),
    (("::", 15006), "unspecified"),
    (("198.18.41.1", 15001), "pod_ip"),
    (("198.18.41.1", 15006), "pod_ip"),
    (("198.18.41.1", 15008), "pod_ip"),
    (("198.18.41.1", 15053), "pod_ip"),
    (("::ffff:198.18.41.1", 15006), "pod_ip"),
    (("fd00::1", 15001), "pod_ip"),
])
def test_a_proxy_listener_is_a_loop(dst: tuple[str, int], why: str) -> None:
    assert loop_reason(dst, POD, PORTS) == why


@pytest.mark.parametrize("dst", [
    ("127.0.0.1", 8080),       # the pod's own app on loopback: not ours
    ("198.18.41.1", 80),       # the pod's own IP, an app port
    ("198.18.43.1", 15001),    # another pod's capture port: its own proxy refuses it there
    ("198.19.41.10", 15006),   # a VIP
    ("not-an-ip", 15001),
])
def test_anything_else_is_not(dst: tuple[str, int]) -> None:
    assert loop_reason(dst, POD, PORTS) is None


def test_custom_capture_ports_are_the_ones_checked() -> None:
    ports = capture_ports(16001, 16006, 16008, 16053)
    assert loop_reason(("127.0.0.1", 16001), POD, ports) == "loopback"
    assert loop_reason(("127.0.0.1", 15001), POD, ports) is None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_burst_then_rate_and_reports_what_it_dropped() -> None:
    clock = Clock()
    b = TokenBuckets(rate=2.0, burst=3, clock=clock)
    assert [b.take("pod-a") for _ in range(3)] == [0, 0, 0]
    assert [b.take("pod-a") for _ in range(4)] == [None] * 4
    clock.now += 0.5  # one token back (2/s)
    assert b.take("pod-a") == 4  # let through, and says 4 were dropped before it
    assert b.take("pod-a") is None
    clock.now += 100  # refills to the burst, never beyond
    assert [b.take("pod-a") for _ in range(4)] == [1, 0, 0, None]


def test_token_bucket_keys_are_independent_and_bounded() -> None:
    clock = Clock()
    b = TokenBuckets(rate=0.0, burst=1, max_keys=2, clock=clock)
    assert b.take(("a", "connection")) == 0
    assert b.take(("a", "connection")) is None  # a is out of budget...
    assert b.take(("b", "connection")) == 0      # ...b is not
    assert b.take(("c", "connection")) == 0      # a third key evicts the least recently used
    assert len(b) == 2
    with pytest.raises(ValueError, match="burst"):
        TokenBuckets(rate=1.0, burst=0)


def test_limiter_per_key_then_global_and_release() -> None:
    lim = Limiter(per_key=2, total=3)
    assert lim.acquire("a") is None and lim.acquire("a") is None
    assert lim.acquire("a") == "pod_limit"    # a has its share...
    assert lim.acquire("b") is None           # ...b still gets one
    assert lim.acquire("b") == "global_limit"  # the process is full
    lim.release("a")
    assert lim.acquire("b") is None
    assert (lim.held("a"), lim.held("b"), lim.used) == (1, 2, 3)


def test_limiter_ignores_releases_it_never_granted() -> None:
    lim = Limiter(per_key=1, total=1)
    lim.release("x")
    assert lim.used == 0 and lim.acquire("x") is None
    assert lim.acquire("y") == "global_limit"


def test_limits_from_config_and_the_fd_derived_default() -> None:
    import resource

    limits = NodeLimits.from_config(ProxyConfig())
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY:
        assert limits.connections.total == max(64, (soft - FD_RESERVE) // FDS_PER_CONNECTION)
    assert limits.connections.per_key == 1024
    assert (limits.pending_connects.per_key, limits.pending_connects.total) == (128, 1024)
    explicit = NodeLimits.from_config(ProxyConfig(max_connections=10))
    assert explicit.connections.total == 10


@pytest.mark.parametrize(("key", "value", "message"), [
    ("max_connections_per_pod", 0, "max_connections_per_pod: must be >= 1"),
    ("max_pending_connects_per_pod", -1, "max_pending_connects_per_pod: must be >= 1"),
    ("max_pending_connects", 0, "max_pending_connects: must be >= 1"),
    ("max_connections", -5, "max_connections: must be >= 0"),
    ("error_log_burst", 0, "error_log_burst: must be >= 1"),
    ("error_log_per_second", -1.0, "error_log_per_second: must be >= 0"),
])
def test_bad_limits_are_one_line_config_errors(key: str, value: float, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        NodeLimits.from_config(ProxyConfig(**{key: value}))


def test_refused_is_a_connection_refused_error_with_its_reason() -> None:
    exc = Refused("loop", "127.0.0.1:15001 is the proxy's own listener (loopback)")
    assert isinstance(exc, ConnectionRefusedError)
    assert exc.errno == errno.ECONNREFUSED and exc.reason == "loop"
    assert "own listener" in str(exc)


def test_the_proxy_command_names_a_bad_limit_in_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "proxy.yaml"
    cfg.write_text("max_pending_connects: 0\n")
    res = subprocess.run([sys.executable, "-m", "cli.main", "proxy", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["error: config: max_pending_connects: must be >= 1"]
