"""The one error type the redirect engine raises: it names the netns and the step."""

from __future__ import annotations


class RedirectError(Exception):
    """A failure applying, reading or removing redirection in one network namespace."""

    def __init__(self, netns: str, step: str, detail: str) -> None:
        self.netns = netns
        self.step = step
        self.detail = " ".join(detail.split())  # one line, whatever the tool printed
        super().__init__(f"netns {netns}: {step}: {self.detail}")
