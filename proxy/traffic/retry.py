"""Connect with retries: a failed upstream connect is tried again on another endpoint, within
the connect timeout, before the client sees a reset.

- The whole connection has `timeout` (connectionPool.tcp.connectTimeout, default 10s); each
  attempt gets an equal share of what is left (remaining / attempts left), so one endpoint
  that drops SYNs cannot eat the budget the others need. The injected `connect` must honour
  the budget it is given (the proxy's wraps its connect in asyncio.timeout).
- `pick(tried)` gets the endpoints already tried by this connection, oldest first, and
  avoids them while others remain, and at least the last one (cluster.py): never the same
  endpoint twice in a row when another is available.
- Each attempt is reported, so outlier detection sees every failure, not just the last.
- `attempts` (3) bounds the tries. Istio has no L4 retry field (Envoy's TCP proxy would make
  one attempt): this is meshnode's, and the issue's.

Timeouts and failures are told apart: TimeoutError from `connect` is connect_timeout, any
other OSError connect_failed; anything else is a bug and propagates, as does cancellation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from proxy.traffic.outlier import Clock
from proxy.traffic.refusal import Reason, Refused

E = TypeVar("E")
T = TypeVar("T")

ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Attempt:
    endpoint: str               # the key of the endpoint tried
    budget: float               # seconds it was given
    failure: Reason | None      # None: connected; CONNECT_FAILED or CONNECT_TIMEOUT
    error: str = ""


@dataclass(frozen=True, slots=True)
class Connected(Generic[E, T]):
    endpoint: E
    value: T                    # what `connect` returned (the upstream socket)
    attempts: tuple[Attempt, ...]


async def connect_with_retries(
        pick: Callable[[Sequence[str]], E],
        connect: Callable[[E, float], Awaitable[T]],
        *, key: Callable[[E], str], timeout: float, clock: Clock,
        attempts: int = ATTEMPTS,
        report: Callable[[E, Attempt], None] | None = None) -> Connected[E, T]:
    """Raises Refused: connect_failed or connect_timeout once the attempts or the time are
    spent, or the picker's refusal (no_healthy_endpoint) if not even one attempt was made."""
    deadline = clock() + timeout
    tried: list[str] = []
    done: list[Attempt] = []
    for n in range(attempts):
        remaining = deadline - clock()
        if remaining <= 0:
            break
        try:
            endpoint = pick(tried)
        except Refused:
            if not done:
                raise
            break  # e.g. the failure just ejected the last endpoint: report the failures
        budget = remaining / (attempts - n)
        k = key(endpoint)
        try:
            value = await connect(endpoint, budget)
        except TimeoutError as exc:
            attempt = Attempt(k, budget, Reason.CONNECT_TIMEOUT, str(exc) or "timed out")
        except OSError as exc:
            attempt = Attempt(k, budget, Reason.CONNECT_FAILED, str(exc) or type(exc).__name__)
        else:
            attempt = Attempt(k, budget, None)
            done.append(attempt)
            if report is not None:
                report(endpoint, attempt)
            return Connected(endpoint, value, tuple(done))
        done.append(attempt)
        if report is not None:
            report(endpoint, attempt)
        tried.append(k)
    timed_out = deadline - clock() <= 0 or (
        bool(done) and done[-1].failure is Reason.CONNECT_TIMEOUT)
    reason = Reason.CONNECT_TIMEOUT if timed_out else Reason.CONNECT_FAILED
    what = ", ".join(f"{a.endpoint}: {a.error}" for a in done) or "no attempt"
    raise Refused(reason, f"{len(done)} attempt(s) in {timeout:g}s: {what}")
