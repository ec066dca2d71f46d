"""Errors a user can cause.

Anything raised as :class:`UserError` reaches the user as one clear message (no traceback) and
makes the CLI exit with status 2. The message must name the file, field or flag at fault and say
how to fix it.
"""


class UserError(Exception):
    """A mistake in user input (spec, flag, path, data) with a message that says how to fix it."""


class ConfigError(UserError):
    """A bad configuration key or value."""
