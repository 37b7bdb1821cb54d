"""Errors whose message tells the user what to fix.

A command that raises one of these prints ``Error: <message>`` and exits non-zero, without a traceback
(``riskstream.cliutil.with_settings`` turns them into click's errors). Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Something outside the code is wrong (a service unreachable, a file missing); exit 1."""


class SettingsError(UserError, ValueError):
    """A setting a command needs is missing or wrong (the message names it); a usage error, exit 2."""
