"""YAML config files mapped onto typed dataclasses (the agent's and the proxy's).

Unknown keys and wrong types are errors that name the key, so a typo never silently falls
back to a default.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, TypeVar

import yaml

from core import addr

T = TypeVar("T")


class ConfigError(ValueError):
    pass


class ChoiceEnum(enum.StrEnum):
    """A config value with a fixed set of choices, read and written as its string. A value
    outside the set is an error listing them (`'x' is not one of ['a', 'b']`); an enum
    whose error must say more overrides `_missing_` to raise its own ValueError."""

    @classmethod
    def _missing_(cls, value: object) -> ChoiceEnum:
        raise ValueError(f"{value!r} is not one of {[m.value for m in cls]}")


def check_address(key: str, value: str, *, hostname: bool = False,
                  port_zero: bool = False) -> tuple[str, int]:
    """`addr.host_port` with the key in the error."""
    try:
        return addr.host_port(value, hostname=hostname, port_zero=port_zero)
    except addr.AddressError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def check_socket_path(key: str, value: str) -> str:
    try:
        return addr.unix_path(value)
    except addr.AddressError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def build_dataclass(cls: type[Any], data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'top level'}: expected a mapping, got "
                          f"{type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"{path}: unknown key")
        kwargs[key] = _coerce(hints[key], value, path)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, path)  # type: ignore[arg-type]
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        (inner,) = typing.get_args(hint)[:1]
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list")
        return [_coerce(inner, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        # `X | None`: None stays None, anything else is built as X (sections like
        # `controlplane` whose absence means "off").
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or len(inner) != 1:
            return value
        return _coerce(inner[0], value, path)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _choice(hint, value, path)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{path}: expected {hint.__name__}, got {type(value).__name__}")
    return value


def _choice(hint: type[enum.Enum], value: Any, path: str) -> Any:
    """An enum member from its value as written in the file (a str enum from a string)."""
    base = str if issubclass(hint, str) else int
    if not isinstance(value, base) or isinstance(value, bool):
        raise ConfigError(f"{path}: expected {base.__name__}, got {type(value).__name__}")
    try:
        return hint(value)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def load_yaml(cls: type[T], path: str | None) -> T:
    """`cls` from a YAML file (every key optional), or its defaults when `path` is None."""
    if path is None:
        return cls()
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    cfg: T = build_dataclass(cls, data, "")
    return cfg


def prefixed(exc: ConfigError) -> ConfigError:
    """`config: KEY: why`: the one line a daemon prints when its config file is refused."""
    return ConfigError(f"config: {exc}")
