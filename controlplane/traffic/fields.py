"""Value types shared by the traffic kinds, read as Istio reads them; a bad value raises
read.Bad(field, reason), with Istio's wording where Istio has one."""

from __future__ import annotations

import re
from typing import Any

from controlplane.ambient import read

# Go's time.ParseDuration units (Istio's durations are Go durations in YAML: "30s", "1m30s").
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
          "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def duration(v: Any, field: str) -> float:
    """A duration in seconds; Istio's ValidateDuration: at least 1ms, whole milliseconds."""
    text = read.string(v, field)
    pos, total = 0, 0.0
    while pos < len(text):
        m = _PART.match(text, pos)
        if m is None:
            raise read.Bad(field, f"{text!r} is not a duration (e.g. 30s, 1m30s, 100ms)")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not text:
        raise read.Bad(field, "empty duration")
    ms = round(total * 1000, 6)
    if ms < 1:
        raise read.Bad(field, "duration must be greater than 1ms")
    if ms != int(ms):
        raise read.Bad(field, "only durations to ms precision are supported")
    return int(ms) / 1000


def percent(v: Any, field: str, default: int) -> int:
    """Istio's ValidatePercent."""
    if v is None:
        return default
    n = read.integer(v, field, -2**31, 2**31 - 1)
    if not 0 <= n <= 100:
        raise read.Bad(field, f"percentage {n} is not in range 0..100")
    return n


def uint32(v: Any, field: str, default: int) -> int:
    """A google.protobuf.UInt32Value (or uint32) field."""
    if v is None:
        return default
    return read.integer(v, field, 0, 2**32 - 1)


def label_map(v: Any, field: str) -> dict[str, str]:
    """A selector's labels; Istio's labels.Instance.Validate: label keys and values."""
    out = read.string_map(v, field)
    for k, val in out.items():
        if not _LABEL_KEY.fullmatch(k):
            raise read.Bad(f"{field}.{k}", f"invalid tag key: {k!r}")
        if val and not _LABEL_VALUE.fullmatch(val):
            raise read.Bad(f"{field}.{k}", f"invalid tag value: {val!r}")
    return out


_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = re.compile(rf"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        rf"{_NAME}")
_LABEL_VALUE = re.compile(_NAME)
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def subset_name(v: Any, field: str) -> str:
    """Istio's validateSubsetName."""
    name = read.string(v, field)
    if not name:
        raise read.Bad(field, "subset name cannot be empty")
    if not _DNS1123_LABEL.fullmatch(name):
        raise read.Bad(field, f"subset name is invalid: {name}")
    return name


_DOMAIN_LABEL = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?")


def wildcard_domain(v: Any, field: str) -> str:
    """Istio's ValidateWildcardDomain: a DNS name, optionally starting with "*" or "*."."""
    host = read.string(v, field)
    if not host:
        raise read.Bad(field, "domain name cannot be empty")
    if len(host) > 255:
        raise read.Bad(field, "domain name too long (max 255)")
    rest = host
    if host == "*":
        return host
    if host.startswith("*."):
        rest = host[2:]
    elif host.startswith("*"):
        rest = host[1:]
    for label in rest.removesuffix(".").split("."):
        if not _DOMAIN_LABEL.fullmatch(label):
            raise read.Bad(field, f"domain name {host!r} invalid (label {label!r} invalid)")
    return host
