"""Go-style durations (``1h30m``, ``300ms``), as Teleport writes them.

Teleport stores role options such as ``max_session_ttl`` with Go's
``time.Duration`` syntax, so roles copied from a Teleport cluster must parse
unchanged, and ours must read naturally to a Teleport user.
"""
from __future__ import annotations

import re
from fractions import Fraction

_NANOSECONDS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign, what Go prints
    "\u03bcs": 1_000,  # Greek mu, which Go also accepts
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_TERM = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_DURATION = re.compile(r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:ns|us|\u00b5s|\u03bcs|ms|s|m|h))+")
#: Go durations are int64 nanoseconds; refusing more keeps us compatible.
_MAX_NANOSECONDS = 2**63 - 1


def parse_duration(text: str) -> float:
    """Parse a Go duration string into seconds; raise ``ValueError`` if it is not one."""
    if not isinstance(text, str):
        raise ValueError(f"expected a duration string, got {type(text).__name__}")
    if text in ("0", "+0", "-0"):
        return 0.0
    if not _DURATION.fullmatch(text):
        raise ValueError(f"invalid duration {text!r} (expected e.g. '30m', '1h30m', '1.5h')")
    nanoseconds = sum(int(Fraction(number) * _NANOSECONDS[unit]) for number, unit in _TERM.findall(text))
    if nanoseconds > _MAX_NANOSECONDS:
        raise ValueError(f"duration {text!r} is out of range")
    if text.startswith("-"):
        nanoseconds = -nanoseconds
    return nanoseconds / 1_000_000_000


def _decimal(whole: int, fraction: int, digits: int) -> str:
    if not fraction:
        return str(whole)
    return f"{whole}.{str(fraction).rjust(digits, '0').rstrip('0')}"


def format_duration(seconds: float) -> str:
    """Format seconds the way Go's ``Duration.String`` does (``30h0m0s``, ``1.5s``, ``300ms``)."""
    nanoseconds = round(Fraction(seconds) * 1_000_000_000)
    sign = "-" if nanoseconds < 0 else ""
    nanoseconds = abs(nanoseconds)
    if nanoseconds == 0:
        return "0s"
    if nanoseconds < 1_000:
        return f"{sign}{nanoseconds}ns"
    if nanoseconds < 1_000_000:
        return f"{sign}{_decimal(*divmod(nanoseconds, 1_000), 3)}\u00b5s"
    if nanoseconds < 1_000_000_000:
        return f"{sign}{_decimal(*divmod(nanoseconds, 1_000_000), 6)}ms"
    whole_seconds, fraction = divmod(nanoseconds, 1_000_000_000)
    hours, rest = divmod(whole_seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{_decimal(secs, fraction, 9)}s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return sign + text
