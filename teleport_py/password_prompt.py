"""Reading a password for tsh and tctl: called before the reactor starts, so
waiting for a person at the keyboard never blocks it."""
from __future__ import annotations

import getpass
import sys


class PasswordInputError(Exception):
    """No password could be read; the message says why."""


def read_password(prompt: str, confirm: bool = False) -> str:
    """From a terminal (asked twice when ``confirm``); one line from stdin otherwise (scripts, tests)."""
    if sys.stdin.isatty():
        password = getpass.getpass(prompt)
        if confirm and getpass.getpass("Confirm password: ") != password:
            raise PasswordInputError("passwords do not match")
        return password
    line = sys.stdin.readline()
    if not line:
        raise PasswordInputError("no password given on stdin")
    return line.rstrip("\r\n")
