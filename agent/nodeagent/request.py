"""The plugin's request, typed: parsed and checked once, where it enters the agent.

The wire form is docs/cni-protocol.md's JSON object (unchanged); `CniRequest.parse` turns
it into a `CniRequest` or raises `InvalidConfig` (code 7) naming what is wrong, so
enrollment works on typed fields only. The CNI server parses each request it reads; the
Kubernetes pod source hands the Enroller the same form, parsed the same way.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.nodeagent.deadline import DEFAULT_BUDGET_MS, BudgetError, budget_of
from agent.nodeagent.errors import InvalidConfig


class Command(enum.StrEnum):
    ADD = "ADD"
    DEL = "DEL"
    CHECK = "CHECK"
    STATUS = "STATUS"
    GC = "GC"


@dataclass(frozen=True)
class PodIdentity:
    """From CNI_ARGS (`K8S_POD_*`); "" when the runtime sent none (plain ctr, podman)."""

    name: str = ""
    namespace: str = ""
    uid: str = ""

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Attachment:
    """One entry of GC's valid attachments (the plugin sends `container_id`; the runtime's
    own `containerID` is accepted too)."""

    container_id: str
    ifname: str = ""


@dataclass(frozen=True)
class CniRequest:
    command: Command
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    pod: PodIdentity = PodIdentity()
    ips: tuple[str, ...] = ()  # prevResult's addresses, without prefix length
    # the plugin entry's `capture` object: per-pod capture options, checked against
    # CaptureOptions when the pod's spec is built (a bad one is refused with code 7 there)
    capture: Mapping[str, Any] = field(default_factory=dict)
    attachments: tuple[Attachment, ...] = ()  # GC only
    # ADD only: the plugin's budget (the default for a plugin that sends none)
    deadline_ms: float = DEFAULT_BUDGET_MS

    @classmethod
    def parse(cls, raw: object, command: Command | None = None) -> CniRequest:
        """The request in `raw` (a decoded JSON object), as `command` if given (the
        Kubernetes source's ADDs carry no `cmd`). Raises InvalidConfig."""
        if not isinstance(raw, Mapping):
            raise InvalidConfig("malformed request: not a JSON object")
        if command is None:
            name = str(raw.get("cmd", "?"))
            try:
                command = Command(name)
            except ValueError:
                raise InvalidConfig(f"unknown command {name!r}") from None
        deadline_ms = float(DEFAULT_BUDGET_MS)
        if command is Command.ADD:
            try:
                deadline_ms = budget_of(raw.get("deadline_ms"))
            except BudgetError as exc:
                raise InvalidConfig(f"malformed request: {exc}") from None
        pod = _object(raw, "pod")
        config = _object(raw, "config")
        req = cls(
            command=command,
            container_id=_str(raw, "container_id"),
            netns=_str(raw, "netns"),
            ifname=_str(raw, "ifname"),
            pod=PodIdentity(name=_str(pod, "name", "pod."),
                            namespace=_str(pod, "namespace", "pod."),
                            uid=_str(pod, "uid", "pod.")),
            ips=tuple(_strings(raw, "ips")),
            capture=dict(_object(config, "capture", "config.")),
            attachments=tuple(_attachment(a, i)
                              for i, a in enumerate(_list(raw, "attachments"))),
            deadline_ms=deadline_ms,
        )
        if command is Command.ADD and not (req.container_id and req.netns):
            raise InvalidConfig("ADD needs container_id and netns")
        return req


def _str(obj: Mapping[str, Any], key: str, where: str = "") -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidConfig(f"malformed request: {where}{key} must be a string")
    return value


def _object(obj: Mapping[str, Any], key: str, where: str = "") -> Mapping[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidConfig(f"malformed request: {where}{key} must be an object")
    return value


def _list(obj: Mapping[str, Any], key: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidConfig(f"malformed request: {key} must be a list")
    return value


def _strings(obj: Mapping[str, Any], key: str) -> list[str]:
    values = _list(obj, key)
    if not all(isinstance(v, str) for v in values):
        raise InvalidConfig(f"malformed request: {key} must be a list of strings")
    return values


def _attachment(value: object, i: int) -> Attachment:
    if not isinstance(value, Mapping):
        raise InvalidConfig(f"malformed request: attachments[{i}] must be an object")
    cid = value.get("container_id", value.get("containerID", ""))
    ifname = value.get("ifname", "")
    if not isinstance(cid, str) or not isinstance(ifname, str):
        raise InvalidConfig(f"malformed request: attachments[{i}] must hold strings")
    return Attachment(container_id=cid, ifname=ifname)
