"""Typed reading of a YAML node tree that keeps each value's line for error messages.

The mesh file is parsed with `yaml.compose` (nodes with marks) rather than `yaml.safe_load`
(plain dicts) so that every validation error can say which line and which field is wrong.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import yaml

_TRUE = {"true", "yes", "on"}
_FALSE = {"false", "no", "off"}


class MeshError(ValueError):
    """A mesh file problem: `<file>:<line>: <field path>: <what is wrong>`."""


class View:
    """One YAML node plus its dotted path from the document root."""

    def __init__(self, node: yaml.Node, path: str, source: str) -> None:
        self.node = node
        self.path = path
        self.source = source

    @property
    def line(self) -> int:
        return int(self.node.start_mark.line) + 1

    def error(self, message: str) -> MeshError:
        return MeshError(f"{self.source}:{self.line}: {self.path or '(top)'}: {message}")

    def _child(self, node: yaml.Node, key: str | int) -> View:
        if isinstance(key, int):
            path = f"{self.path}[{key}]"
        else:
            path = f"{self.path}.{key}" if self.path else key
        return View(node, path, self.source)

    # --- containers ---

    def mapping(self, allowed: set[str], required: tuple[str, ...] = ()) -> dict[str, View]:
        if not isinstance(self.node, yaml.MappingNode):
            raise self.error(f"expected a mapping, got {self._kind()}")
        out: dict[str, View] = {}
        for knode, vnode in self.node.value:
            key = knode.value if isinstance(knode, yaml.ScalarNode) else None
            kview = self._child(knode, str(key))
            if not isinstance(key, str):
                raise self.error("keys must be plain strings")
            if key not in allowed:
                raise kview.error(f"unknown field (allowed: {', '.join(sorted(allowed))})")
            if key in out:
                raise kview.error("duplicate field")
            out[key] = self._child(vnode, key)
        for key in [k for k in required if k not in out]:
            raise self.error(f"missing required field {key!r}")
        return out

    def items(self) -> Iterator[View]:
        if self.is_null():
            return
        if not isinstance(self.node, yaml.SequenceNode):
            raise self.error(f"expected a list, got {self._kind()}")
        for i, n in enumerate(self.node.value):
            yield self._child(n, i)

    def string_map(self) -> dict[str, str]:
        if self.is_null():
            return {}
        if not isinstance(self.node, yaml.MappingNode):
            raise self.error(f"expected a mapping, got {self._kind()}")
        out: dict[str, str] = {}
        for knode, vnode in self.node.value:
            key = self._child(knode, "(key)").string()
            out[key] = self._child(vnode, key).string()
        return out

    # --- scalars ---

    def is_null(self) -> bool:
        return isinstance(self.node, yaml.ScalarNode) and self.node.tag.endswith(":null")

    def string(self) -> str:
        if not isinstance(self.node, yaml.ScalarNode) or self.is_null():
            raise self.error(f"expected a string, got {self._kind()}")
        return str(self.node.value)

    def name(self) -> str:
        """A non-empty identifier usable in a SPIFFE path segment or a resource name."""
        value = self.string()
        if not value or not all(c.isalnum() or c in "-._" for c in value):
            raise self.error(f"{value!r} must be non-empty and only letters, digits, '-', '.', '_'")
        return value

    def integer(self, lo: int, hi: int) -> int:
        if not isinstance(self.node, yaml.ScalarNode) or not self.node.tag.endswith(":int"):
            raise self.error(f"expected an integer, got {self._kind()}")
        value = int(str(self.node.value).replace("_", ""), 0)
        if not lo <= value <= hi:
            raise self.error(f"{value} is out of range {lo}..{hi}")
        return value

    def boolean(self) -> bool:
        value = self.string().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise self.error(f"expected true or false, got {value!r}")

    def choice(self, options: list[str]) -> str:
        value = self.string().lower()
        if value not in options:
            raise self.error(f"{value!r} is not one of {', '.join(options)}")
        return value

    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        try:
            return ipaddress.ip_address(self.string())
        except ValueError:
            raise self.error(f"{self.node.value!r} is not an IP address") from None

    def cidr(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        try:
            return ipaddress.ip_network(self.string(), strict=True)
        except ValueError as exc:
            raise self.error(f"{self.node.value!r} is not a CIDR or IP: {exc}") from None

    def _kind(self) -> str:
        if isinstance(self.node, yaml.MappingNode):
            return "a mapping"
        if isinstance(self.node, yaml.SequenceNode):
            return "a list"
        if self.is_null():
            return "nothing"
        return f"{self.node.value!r}"


def compose(text: str, source: str) -> View:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else 0
        raise MeshError(f"{source}:{line}: (yaml): {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise MeshError(f"{source}: (yaml): {exc}") from None
    if node is None:  # an empty file: a null node that still has a mark
        node = yaml.ScalarNode("tag:yaml.org,2002:null", "", start_mark=yaml.Mark(
            source, 0, 0, 0, "", 0))
    return View(node, "", source)
