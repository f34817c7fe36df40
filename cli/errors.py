"""Errors a command raises when the message is the whole story (printed, exit 2), and the
checks of address and socket flags that raise them (before any socket is made)."""

from __future__ import annotations

from core.config import ConfigError, check_address, check_socket_path


class UserError(Exception):
    pass


def check_flag_address(flag: str, value: str, *, hostname: bool = False,
                       port_zero: bool = False) -> tuple[str, int]:
    """`--flag: why` as a UserError when `value` is not a usable HOST:PORT."""
    try:
        return check_address(flag, value, hostname=hostname, port_zero=port_zero)
    except ConfigError as exc:
        raise UserError(str(exc)) from None


def check_flag_socket(flag: str, value: str) -> str:
    try:
        return check_socket_path(flag, value)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
