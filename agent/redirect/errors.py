"""The redirect engine's errors: RedirectError names the netns and the step of one pod's
redirection; BackendUnavailable says a backend cannot run on this host at all."""

from __future__ import annotations


class RedirectError(Exception):
    """A failure applying, reading or removing redirection in one network namespace."""

    def __init__(self, netns: str, step: str, detail: str) -> None:
        self.netns = netns
        self.step = step
        self.detail = " ".join(detail.split())  # one line, whatever the tool printed
        super().__init__(f"netns {netns}: {step}: {self.detail}")


class BackendUnavailable(Exception):
    """A backend cannot run on this host (`prepare()` failed: for eBPF, no bpffs, cgroup
    v2, kernel headers or a verifier rejection); the message names the cause."""
