"""The agent's capture backend: the configured one, prepared before the first pod.

Preparing runs once at start-up (flavour detection for iptables, in the host netns; loading
and attaching the programs for eBPF), so a kernel that cannot run the backend is found then,
and, with `capture.fallback`, replaced by a netfilter backend, rather than at the first pod.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from agent.config import AgentConfig
from agent.nodeagent import metrics
from agent.redirect import backend as engine
from agent.redirect.errors import BackendUnavailable
from core.config import ConfigError

log = structlog.get_logger("enroll")

MakeBackend = Callable[..., engine.RuleBackend]


def make_capture_backend(cfg: AgentConfig,
                         make: MakeBackend = engine.make_backend) -> engine.RuleBackend:
    """`make` builds a backend from the config's settings (engine.make_backend; a test's
    fake). Raises ConfigError when the backend cannot run here and there is no fallback."""
    c = cfg.capture
    impl = make(c.backend, c.iptables_flavour, bpf_pin_dir=c.bpf_pin_dir(),
                bpf_cgroup=c.bpf_cgroup())
    try:
        impl.prepare()
    except BackendUnavailable as exc:
        # Only eBPF can be unavailable (a netfilter backend's tools fail per pod instead).
        if not c.fallback:
            raise ConfigError(f"capture.backend {c.backend}: {exc} (set capture.fallback: "
                              "iptables to fall back)") from None
        log.warning("ebpf_unavailable_falling_back", reason=str(exc), fallback=c.fallback)
        metrics.BACKEND_FALLBACK.inc()
        impl.close()
        impl = make(c.fallback, c.iptables_flavour)
        impl.prepare()
    return impl
