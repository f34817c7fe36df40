"""What the agent answers the plugin: a Reply, and the typed errors a failed one comes from.

Every refusal is a `CniError` subclass that carries its CNI error code (the spec's
"Error codes" table) and whether the runtime should retry. Enrollment raises them; the CNI
server and the Kubernetes source receive them as a `Reply` (docs/cni-protocol.md,
"Response"): `{"ok": false, "code": N, "msg": "...", "details": ""}` on the wire.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, ClassVar


class CniCode(enum.IntEnum):
    """CNI spec error codes (1-99 reserved by the spec; the plugin uses 100 for itself)."""

    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENVIRONMENT = 4  # here: a netns the agent must not capture, a peer not root
    IO_FAILURE = 5
    DECODE_FAILURE = 6
    INVALID_CONFIG = 7  # a malformed request, bad capture options
    TRY_AGAIN = 11
    PLUGIN_NOT_AVAILABLE = 50  # CNI 1.1 STATUS
    LIMITED_CONNECTIVITY = 51  # CNI 1.1 STATUS

    @property
    def retryable(self) -> bool:
        """Whether the same request can succeed later without anyone changing it."""
        return self in (CniCode.TRY_AGAIN, CniCode.PLUGIN_NOT_AVAILABLE,
                        CniCode.LIMITED_CONNECTIVITY)


class CniError(Exception):
    """A request the agent refuses; `msg` is the one line the runtime shows."""

    code: ClassVar[CniCode] = CniCode.TRY_AGAIN

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.msg = msg

    @property
    def retryable(self) -> bool:
        return self.code.retryable


class TryAgain(CniError):
    """Not now: no proxy took the pod, the netns is not there yet, a deadline passed."""

    code = CniCode.TRY_AGAIN


class InvalidConfig(CniError):
    """The request itself is wrong (malformed, bad capture options): retrying won't help."""

    code = CniCode.INVALID_CONFIG


class InvalidEnvironment(CniError):
    """The netns must not be captured (the host's, the agent's own), or the peer is not root."""

    code = CniCode.INVALID_ENVIRONMENT


class PluginNotAvailable(CniError):
    """CNI STATUS: an ADD cannot succeed now (agent not ready, no proxy takes pods)."""

    code = CniCode.PLUGIN_NOT_AVAILABLE


@dataclass(frozen=True)
class Reply:
    ok: bool
    captured: bool = False
    detail: str = ""
    code: int = 0

    @classmethod
    def failed(cls, err: CniError) -> Reply:
        return cls(ok=False, detail=err.msg, code=int(err.code))

    @property
    def retryable(self) -> bool:
        code = self.code or CniCode.TRY_AGAIN
        return not self.ok and code in CniCode.__members__.values() and CniCode(code).retryable

    def to_json(self) -> dict[str, Any]:
        if self.ok:
            return {"ok": True, "captured": self.captured, "detail": self.detail}
        return {"ok": False, "code": self.code or int(CniCode.TRY_AGAIN), "msg": self.detail,
                "details": ""}


def fail(msg: str, code: int = CniCode.TRY_AGAIN) -> Reply:
    return Reply(ok=False, detail=msg, code=int(code))
