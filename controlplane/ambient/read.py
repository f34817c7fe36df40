"""Reading fields of plain-dict Kubernetes objects with types checked. A wrong type, a missing
required field or a bad value raises `Bad(field, reason)`; the index turns it into the error
`Kind ns/name: field: reason` and skips that object, so one malformed object never stops the
conversion of the others."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from typing import Any

from core.mesh.model import IPNetwork


class Bad(Exception):
    """A malformed field. `field` is its path in the object, e.g. `spec.ports[1].port`."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _type(v: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(v), type(v).__name__)


def mapping(v: Any, field: str) -> dict[str, Any]:
    """A mapping; absent (None) is empty."""
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise Bad(field, f"want a mapping, got {_type(v)}")
    return v


def items(v: Any, field: str) -> list[Any]:
    """A list; absent (None) is empty."""
    if v is None:
        return []
    if not isinstance(v, list):
        raise Bad(field, f"want a list, got {_type(v)}")
    return v


def string(v: Any, field: str, default: str = "") -> str:
    if v is None:
        return default
    if not isinstance(v, str):
        raise Bad(field, f"want a string, got {_type(v)}")
    return v


def strings(v: Any, field: str) -> list[str]:
    return [string(x, f"{field}[{i}]") for i, x in enumerate(items(v, field))]


def string_map(v: Any, field: str) -> dict[str, str]:
    """Labels, annotations, selectors: string keys to string values."""
    out = {}
    for k, x in mapping(v, field).items():
        out[str(k)] = string(x, f"{field}.{k}")
    return out


def boolean(v: Any, field: str, default: bool = False) -> bool:
    if v is None:
        return default
    if not isinstance(v, bool):
        raise Bad(field, f"want true or false, got {_type(v)}")
    return v


def integer(v: Any, field: str, lo: int, hi: int, default: int | None = None) -> int:
    if v is None and default is not None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise Bad(field, f"want an integer, got {_type(v)}")
    if not lo <= v <= hi:
        raise Bad(field, f"{v} is out of range {lo}-{hi}")
    return v


def port(v: Any, field: str) -> int:
    return integer(v, field, 1, 65535)


def port_text(v: Any, field: str) -> int:
    """A port written as a string (AuthorizationPolicy ports, PeerAuthentication keys)."""
    if isinstance(v, int) and not isinstance(v, bool):
        return port(v, field)
    text = string(v, field)
    if not text.isdigit():
        raise Bad(field, f"{text!r} is not a port number")
    return port(int(text), field)


def ip(v: Any, field: str) -> str:
    """An IP address as normalized text (the model keeps IPs as text)."""
    text = string(v, field)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise Bad(field, f"{text!r} is not an IP address") from None


def cidr(v: Any, field: str) -> IPNetwork:
    """An IP (a /32 or /128) or a CIDR; host bits are cleared, as istiod's Masked()."""
    text = string(v, field)
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise Bad(field, f"{text!r} is not an IP address or CIDR") from None


def meta(obj: dict[str, Any]) -> dict[str, Any]:
    return mapping(obj.get("metadata"), "metadata")


def spec(obj: dict[str, Any]) -> dict[str, Any]:
    return mapping(obj.get("spec"), "spec")


def labels_of(obj: dict[str, Any]) -> dict[str, str]:
    return string_map(meta(obj).get("labels"), "metadata.labels")


def annotations_of(obj: dict[str, Any]) -> dict[str, str]:
    return string_map(meta(obj).get("annotations"), "metadata.annotations")


def name(obj: dict[str, Any]) -> str:
    n = string(meta(obj).get("name"), "metadata.name")
    if not n:
        raise Bad("metadata.name", "missing")
    return n


def namespace(obj: dict[str, Any]) -> str:
    ns = string(meta(obj).get("namespace"), "metadata.namespace")
    if not ns:
        raise Bad("metadata.namespace", "missing")
    return ns


def created(obj: dict[str, Any]) -> datetime:
    """metadata.creationTimestamp as naive UTC; absent or unreadable is the oldest time (Go's
    zero time, which is what istiod compares when the field is unset)."""
    m = obj.get("metadata")
    raw = m.get("creationTimestamp") if isinstance(m, dict) else None
    if isinstance(raw, str):
        try:
            raw = datetime.fromisoformat(raw)
        except ValueError:
            return datetime.min
    if not isinstance(raw, datetime):  # YAML loaders give datetimes for unquoted timestamps
        return datetime.min
    return raw if raw.tzinfo is None else raw.astimezone(UTC).replace(tzinfo=None)


def selects(selector: dict[str, str] | tuple[tuple[str, str], ...],
            labels_: dict[str, str]) -> bool:
    """A matchLabels selector (every pair present) selects these labels."""
    pairs = selector.items() if isinstance(selector, dict) else selector
    return all(labels_.get(k) == v for k, v in pairs)
