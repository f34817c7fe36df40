"""Errors a command raises when the message is the whole story (printed, exit 2)."""


class UserError(Exception):
    pass
