"""
Exit status of an exec/attach session, from its error stream (channel 3).

v1-v3 send plain text (empty means success); v4 and v5 send a JSON
metav1.Status. The exit code is decided the way kubectl decides it, so the
recording shows the code the user saw.
"""

import json

import attrs

#: A status is a few hundred bytes; anything much larger is not a status.
MAX_STATUS_SIZE = 64 * 1024


class RemoteCommandError(Exception):
    """The one exception session observers raise on bad bytes."""


@attrs.frozen
class ExitStatus:
    code: int
    message: str


SUCCESS = ExitStatus(0, "")


def parse_error_text(raw: bytes) -> ExitStatus:
    """v1-v3: any text on the error stream is a failure."""
    message = raw.decode("utf-8", errors="replace")
    return ExitStatus(1, message) if message else SUCCESS


def parse_status(raw: bytes) -> ExitStatus:
    """v4/v5: a metav1.Status; an empty error stream is also success."""
    if not raw.strip():
        return SUCCESS
    try:
        status = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise RemoteCommandError("error stream is not a JSON Status") from e
    if not isinstance(status, dict):
        raise RemoteCommandError("error stream is not a JSON Status")
    message = status.get("message")
    message = message if isinstance(message, str) else ""
    if status.get("status") == "Success":
        return SUCCESS
    if status.get("status") != "Failure":
        return ExitStatus(1, "error stream protocol error: unknown error")
    if status.get("reason") == "NonZeroExitCode":
        code = _exit_code_cause(status.get("details"))
        if code is not None:
            return ExitStatus(code, message)
    return ExitStatus(1, message)


def _exit_code_cause(details: object) -> int | None:
    """The ExitCode cause as kubectl reads it: decimal, 0-255."""
    causes = details.get("causes") if isinstance(details, dict) else None
    for cause in causes if isinstance(causes, list) else []:
        if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
            value = cause.get("message")
            if isinstance(value, str) and value.isascii() and value.isdigit() \
                    and int(value) <= 255:
                return int(value)
            return None
    return None
